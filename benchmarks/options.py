"""Command lines generated from config dataclasses: one option per field, typed by its annotation, helped by
the class docstring's ``Attributes:`` section, and the dataclass built back from the parsed arguments.

A field's ``metadata["cli"]`` adjusts its option: ``flag`` (another name, e.g. ``"--quiet"`` for a
``verbose`` field that defaults to True), ``positional``, ``choices``, ``nargs``/``type``/``metavar`` (for a
field whose type is not a plain one), ``group`` (an argument group's title), ``help`` (instead of the docstring's, e.g. for a negated flag),
``hidden`` (no help line),
``skip`` (no option at all).

>>> import argparse
>>> from dataclasses import dataclass, field
>>> @dataclass
... class Example:
...     '''An example.
...
...     Attributes:
...         name: what to run.
...         steps: how many steps.
...         size: height and width.
...         verbose: progress lines.
...     '''
...     name: str = field(metadata={"cli": {"positional": True, "choices": ("a", "b")}})
...     steps: int = 3
...     size: tuple[int, int] | None = None
...     verbose: bool = field(default=True, metadata={"cli": {"flag": "--quiet"}})
>>> parser = argparse.ArgumentParser()
>>> add_options(parser, Example)
>>> args = parser.parse_args(["a", "--steps", "5", "--size", "4", "6", "--quiet"])
>>> from_args(Example, args)
Example(name='a', steps=5, size=(4, 6), verbose=False)
>>> parser = argparse.ArgumentParser()
>>> add_options(parser, Example, overrides_only=True, skip=("name",))
>>> overrides(Example, parser.parse_args(["--steps", "7"]))
{'steps': 7}
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["field_help", "add_options", "from_args", "overrides", "flag", "numbers", "key_values", "parse_fields", "add_saved_controller", "saved_seed"]

_ENTRY = re.compile(r"^(\s*)([A-Za-z_][\w, ]*):\s*(.*)$")


def field_help(cls: type) -> dict[str, str]:
    """``{field: help}`` from the ``Attributes:`` (or ``Args:``) section of ``cls``'s docstring.

    An entry ``a, b: text`` helps both fields; indented lines below an entry continue its text.
    """
    doc = inspect.getdoc(cls) or ""
    out: dict[str, str] = {}
    inside, indent, current = False, None, []
    for line in doc.splitlines():
        if line.strip() in ("Attributes:", "Args:"):
            inside, indent, current = True, None, []
            continue
        if not inside:
            continue
        if not line.strip():
            continue
        width = len(line) - len(line.lstrip())
        if width == 0:  # the section ended
            inside = False
            continue
        match = _ENTRY.match(line)
        if match and (indent is None or width == indent):
            indent = width
            current = [name.strip() for name in match.group(2).split(",")]
            for name in current:
                out[name] = match.group(3).strip()
        elif current:
            for name in current:
                out[name] = f"{out[name]} {line.strip()}".strip()
    return out


def _unwrap_optional(hint: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _type_options(hint: Any) -> dict[str, Any]:
    """argparse ``type``/``nargs`` for a field annotation: plain scalars, ``list[X]``, ``tuple[X, X]``."""
    hint = _unwrap_optional(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list and len(args) == 1:
        return {"type": args[0], "nargs": "+"}
    if origin is tuple and args and Ellipsis not in args and len(set(args)) == 1:
        return {"type": args[0], "nargs": len(args)}
    if hint in (int, float, str):
        return {"type": hint}
    return {}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def add_options(
    parser: argparse.ArgumentParser, cls: type, *, overrides_only: bool = False, skip: Iterable[str] = ()
) -> None:
    """Add one option per field of the dataclass ``cls`` to ``parser``.

    Args:
        overrides_only: every option defaults to None ("not given"), for a config whose defaults come from
            elsewhere (a preset); see :func:`overrides`.
        skip: fields without an option.

    Raises:
        TypeError: a field whose annotation has no option type and no ``metadata["cli"]["type"]``.
    """
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    skipped = set(skip)
    for f in dataclasses.fields(cls):
        meta: Mapping[str, Any] = f.metadata.get("cli", {})
        if f.name in skipped or meta.get("skip"):
            continue
        target = parser
        if "group" in meta:
            target = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        text = argparse.SUPPRESS if meta.get("hidden") else meta.get("help", helps.get(f.name))
        default = _default(f)
        if meta.get("positional"):
            target.add_argument(f.name, choices=meta.get("choices"), help=text)
            continue
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        options: dict[str, Any] = {"dest": f.name, "help": text}
        if _unwrap_optional(hints[f.name]) is bool:
            options["action"] = "store_false" if default is True else "store_true"
            options["default"] = None if overrides_only else bool(default)
        else:
            options.update(_type_options(hints[f.name]))
            options.update({k: meta[k] for k in ("type", "nargs", "metavar", "choices") if k in meta})
            if "type" not in options:
                raise TypeError(f"{cls.__name__}.{f.name}: no command-line type for {hints[f.name]!r}; set metadata['cli']['type']")
            if overrides_only:
                options["default"] = None
            elif default is dataclasses.MISSING:
                options["required"] = True
            else:
                options["default"] = default
        target.add_argument(flag, **options)


def _converted(hint: Any, value: Any) -> Any:
    if isinstance(value, list) and typing.get_origin(_unwrap_optional(hint)) is tuple:
        return tuple(value)
    return value


def from_args(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """The dataclass ``cls`` built from parsed ``args`` (fields without an option keep their defaults);
    ``extra`` sets fields directly."""
    hints = typing.get_type_hints(cls)
    values = {f.name: _converted(hints[f.name], getattr(args, f.name)) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(extra)
    return cls(**values)


def overrides(cls: type, args: argparse.Namespace, *, skip: Iterable[str] = ()) -> dict[str, Any]:
    """The fields of ``cls`` given on the command line (options added with ``overrides_only``); fields in
    ``skip`` or marked ``skip`` in their metadata are left out even where ``args`` has them."""
    hints = typing.get_type_hints(cls)
    skipped = set(skip)
    return {
        f.name: _converted(hints[f.name], getattr(args, f.name))
        for f in dataclasses.fields(cls)
        if f.name not in skipped and not f.metadata.get("cli", {}).get("skip") and getattr(args, f.name, None) is not None
    }


def flag(value: str) -> bool:
    """``"true"`` / ``"false"`` (any case) -> bool; anything else is refused.

    >>> flag("True"), flag("false")
    (True, False)
    """
    lowered = value.strip().lower()
    if lowered not in ("true", "false"):
        raise ValueError(f"expected true or false, got {value!r}")
    return lowered == "true"


def numbers(text: str) -> list[float]:
    """``"0/0.4/0.6"`` -> ``[0.0, 0.4, 0.6]``: a list of numbers as one ``KEY=VALUE`` value (``,`` separates the
    pairs); empty parts skipped, so ``""`` is the empty list.

    >>> numbers("0/0.4/0.6"), numbers("")
    ([0.0, 0.4, 0.6], [])

    Raises:
        ValueError: a part that is not a number.
    """
    return [float(v) for v in text.split("/") if v.strip()]


def key_values(text: str) -> list[tuple[str, str]]:
    """``"KEY=VALUE,KEY=VALUE"`` -> ``[(key, value)]`` (empty parts skipped).

    >>> key_values("a=1, b=x,")
    [('a', '1'), ('b', 'x')]

    Raises:
        ValueError: a part without ``=``, naming it.
    """
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"{part!r} is not KEY=VALUE")
        out.append((key, value))
    return out


def parse_fields(text: str, cls: type) -> dict[str, Any]:
    """``"KEY=VALUE,KEY=VALUE"`` -> ``{field: value}`` for fields of the dataclass ``cls`` of type bool, int, float,
    str or ``tuple[float, ...]`` (values separated by ``/``, none for the empty tuple), each value converted by its
    field's type.

    >>> import dymu
    >>> parse_fields("budget_trees=2,solo=true,lr=0.001,own_trees=0/0.4", dymu.SupernetConfig)
    {'budget_trees': 2, 'solo': True, 'lr': 0.001, 'own_trees': (0.0, 0.4)}

    Raises:
        ValueError: a part without ``=``, an unknown field (naming the known ones), a field of another type, or a
            value its type does not parse.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    out: dict[str, Any] = {}
    for key, value in key_values(text):
        if key not in names:
            raise ValueError(f"{cls.__name__} has no field {key!r}; its fields are {names}")
        kind = _unwrap_optional(hints[key])
        if kind is bool:
            try:
                out[key] = flag(value)
            except ValueError as error:
                raise ValueError(f"{key}={value!r}: {error}") from None
        elif kind == tuple[float, ...]:
            try:
                out[key] = tuple(numbers(value))
            except ValueError as error:
                raise ValueError(f"{key}={value!r}: expected numbers separated by '/'") from error
        elif kind in (int, float, str):
            try:
                out[key] = kind(value)
            except ValueError as error:
                raise ValueError(f"{key}={value!r}: expected {kind.__name__}") from error
        else:
            raise ValueError(f"{cls.__name__}.{key} ({hints[key]}) cannot be set as KEY=VALUE")
    return out


def add_saved_controller(parser: argparse.ArgumentParser, benchmarks: Iterable[str], seed_help: str) -> None:
    """The arguments of a tool that reads a controller a benchmark run saved: the file, ``--benchmark``, ``--quick`` /
    ``--full`` (``mode``, None when neither is given) and ``--seed``."""
    from pathlib import Path

    parser.add_argument("controller", type=Path, help="a controller file a run saved (OUT/<stem>-state/seed{N}-dymu.pt)")
    parser.add_argument("--benchmark", choices=tuple(benchmarks), required=True)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="mode", action="store_const", const="quick")
    size.add_argument("--full", dest="mode", action="store_const", const="full")
    parser.add_argument("--seed", type=int, default=None, help=seed_help + " (default: N of a file named seed{N}-dymu.pt, else 0)")


def saved_seed(parser: argparse.ArgumentParser, controller: str | os.PathLike, seed: int | None) -> int:
    """The run's seed of a saved controller: ``seed``, or N of a file named ``seed{N}-dymu.pt``; the parser stops
    when both are given and differ (the seed picks the stage-0 streams beside the file and the batch order)."""
    match = re.fullmatch(r"seed(\d+)-dymu\.pt", os.path.basename(controller))
    named = int(match[1]) if match else None
    if seed is not None and named is not None and seed != named:
        parser.error(f"--seed {seed} but the controller file {controller} is seed {named}'s")
    return seed if seed is not None else (named if named is not None else 0)


def checked_saved_controller(parser: argparse.ArgumentParser, args: argparse.Namespace, budgets: Iterable[float],
                             flag: str) -> int:
    """The run's seed of the controller file of :func:`add_saved_controller`'s arguments (:func:`saved_seed`); the
    parser stops on a budget of ``flag`` outside (0, 1] or a missing file."""
    bad = [b for b in budgets if not 0 < b <= 1]
    if bad:
        parser.error(f"{flag} must lie in (0, 1], got {bad}")
    if not args.controller.is_file():
        parser.error(f"no controller file at {args.controller}")
    return saved_seed(parser, args.controller, args.seed)
