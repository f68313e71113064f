"""Run configuration files for ``dymu train CONFIG.toml``: parsing, validation, and resolving names.

A config names the task set, the data and the backbone either as a registered name or as
``"module:attribute"`` of your own code, and sets the steps of each stage (``steps = N`` or
``epochs = x``; sized to the data by default)::

    tasks = "tinytasks:TASKS"          # or a registered task set: "fashion_digits", "multifashion"
    seed = 0                           # optional (0)
    device = "cpu"                     # optional ("cpu")
    out = "runs/tiny"                  # optional ("runs/<config file stem>"), relative to the current folder
    preset = "cpu"                     # optional: "cpu" (default step sizes below) or "paper" (30000 per stage)
    checkpoint_every = 500             # optional: also checkpoint every N steps (default: at each stage's end)

    [data]
    source = "tinytasks:make_data"     # or "fashion_digits" / "multifashion"
    batch_size = 32                    # optional (64)
    options = { n_train = 512 }        # optional keyword arguments of the data callable

    [backbone]
    name = "lenet"                     # a registered backbone, or "module:attribute" of a factory
    options = { width_mult = 0.25 }    # optional keyword arguments of the factory

    [anchor]                           # optional, like [supernet], [edge] and [weights]
    steps = 60                         # or: epochs = 2

    [supernet]                         # optional
    solo = true                        # keep single-task streams for tasks left alone (dymu.solo)

    [evaluate]                         # optional: the table results.json holds (on the val split)
    preferences = [[1, 1, 1], [1, 0, 0]]
    budgets = [1.0, 0.5]
    max_batches = 20

Step defaults (preset ``"cpu"``): anchor 2 epochs, supernet 1 epoch, edge 1 epoch, weights 0.5 epoch of
the training data, capped at 3000 / 1500 / 2000 / 1000 steps (the paper's 30,000 per stage take hours on
a CPU); when the training data has no ``len()``, 600 / 300 / 400 / 200 steps. Preset ``"paper"``: 30,000
steps per stage and no supernet stage (``[supernet] steps = 0`` skips it under any preset) (the presets of :mod:`dymu.stage_configs`, shared with ``AnchorConfig.preset()`` and
the other stage configs). A stage table overrides either.

Every stage writes a checkpoint to ``out/checkpoints/<stage>.pt`` at its end (and every
``checkpoint_every`` steps); ``dymu train CONFIG.toml --resume`` continues a killed run from them:
finished stages are loaded, the interrupted one resumes where its last checkpoint left it.

A data callable is called with the config's ``options`` and, when its signature accepts them,
``batch_size`` and ``seed``; it returns ``(train, val, test)``, each an iterable of
``(x [B, ...], {task: target [B, ...]})`` batches (a ``DataLoader`` works) that can be iterated
more than once. A task attribute is a list of :class:`dymu.Task` or a callable returning one.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .stage_configs import PRESETS, STAGES, preset_steps

__all__ = [
    "ConfigError",
    "RunConfig",
    "StageSteps",
    "PRESETS",
    "load_config",
    "parse_config",
    "resolve_attribute",
    "resolve_tasks_spec",
    "resolve_data",
    "resolve_backbone",
    "stage_steps",
]

BUILTIN_DATA = ("multifashion", "fashion_digits")

_TOP_KEYS = {"tasks", "data", "backbone", "seed", "device", "out", "preset", "checkpoint_every", "evaluate", *STAGES}
_TABLE_KEYS = {
    "data": {"source", "batch_size", "options"},
    "backbone": {"name", "options"},
    "evaluate": {"preferences", "budgets", "max_batches"},
    **{stage: {"steps", "epochs"} for stage in STAGES},
    "supernet": {"steps", "epochs", "solo"},
}


class ConfigError(ValueError):
    """A run config that cannot be used; the message names the file, the key and the value."""


@dataclass(frozen=True)
class StageSteps:
    """How long one stage trains: ``steps``, or ``epochs`` of the training data (exactly one, or neither for the preset)."""

    steps: int | None = None
    epochs: float | None = None


@dataclass(frozen=True)
class RunConfig:
    """A validated run config (see the module docstring for the file format)."""

    path: Path
    tasks: str
    data: str
    backbone: str
    batch_size: int = 64
    data_options: dict[str, Any] = field(default_factory=dict)
    backbone_options: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, StageSteps] = field(default_factory=dict)
    preset: str = "cpu"
    checkpoint_every: int | None = None
    seed: int = 0
    device: str = "cpu"
    out: Path = Path("runs/run")
    preferences: list[list[float]] | None = None
    budgets: list[float] | None = None
    max_batches: int = 20
    solo: bool = False
    raw: dict[str, Any] = field(default_factory=dict)


def _toml():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ConfigError(
                "reading TOML configs needs Python 3.11+ (tomllib) or, on Python 3.10, the 'tomli' package: pip install tomli"
            ) from None
    return tomllib


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a TOML run config. Raises :class:`ConfigError` or ``FileNotFoundError``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}")
    tomllib = _toml()
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return parse_config(raw, path)


def _where(path: Path, key: str) -> str:
    return f"{path}: key {key!r}"


def _typed(raw: Mapping[str, Any], key: str, kind: type | tuple[type, ...], path: Path, what: str, default: Any = ...) -> Any:
    name = key.rpartition(".")[2]
    if name not in raw:
        if default is ...:
            raise ConfigError(f"{path}: missing key {key!r} ({what})")
        return default
    value = raw[name]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ConfigError(f"{_where(path, key)} must be {what}, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(f"{_where(path, key)} must be {what}, got {value!r}")
    return value


def parse_config(raw: Mapping[str, Any], path: str | Path = "<config>") -> RunConfig:
    """Validate a parsed config mapping (unknown keys, missing keys, types) into a :class:`RunConfig`."""
    path = Path(path)
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; known keys: {sorted(_TOP_KEYS)}")
    for table, allowed in _TABLE_KEYS.items():
        if table in raw:
            if not isinstance(raw[table], Mapping):
                raise ConfigError(f"{_where(path, table)} must be a table ([{table}]), got {raw[table]!r}")
            extra = sorted(set(raw[table]) - allowed)
            if extra:
                raise ConfigError(f"{path}: unknown key(s) {[f'{table}.{k}' for k in extra]}; [{table}] takes {sorted(allowed)}")
    tasks = _typed(raw, "tasks", str, path, 'a registered task set ("fashion_digits") or "module:attribute"')
    for table in ("data", "backbone"):
        if table not in raw:
            raise ConfigError(f"{path}: missing table [{table}]")
    data = raw["data"]
    source = _typed(data, "data.source", str, path, 'a registered data name ("fashion_digits") or "module:attribute"')
    batch_size = _typed(data, "data.batch_size", int, path, "a positive integer", 64)
    if batch_size < 1:
        raise ConfigError(f"{_where(path, 'data.batch_size')} must be a positive integer, got {batch_size}")
    data_options = dict(_typed(data, "data.options", Mapping, path, "a table of keyword arguments", {}))
    backbone = raw["backbone"]
    name = _typed(backbone, "backbone.name", str, path, 'a registered backbone ("lenet") or "module:attribute"')
    backbone_options = dict(_typed(backbone, "backbone.options", Mapping, path, "a table of keyword arguments", {}))
    preset = _typed(raw, "preset", str, path, f"one of {sorted(PRESETS)}", "cpu")
    if preset not in PRESETS:
        raise ConfigError(f"{_where(path, 'preset')} must be one of {sorted(PRESETS)}, got {preset!r}")
    checkpoint_every = _typed(raw, "checkpoint_every", int, path, "a positive integer", None)
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ConfigError(f"{_where(path, 'checkpoint_every')} must be a positive integer, got {checkpoint_every}")
    stages = {}
    for stage in STAGES:
        table = raw.get(stage, {})
        if "steps" in table and "epochs" in table:
            raise ConfigError(f"{path}: [{stage}] gives both steps and epochs; give one")
        steps = _typed(table, f"{stage}.steps", int, path, "a positive integer", None)
        epochs = _typed(table, f"{stage}.epochs", (int, float), path, "a positive number", None)
        # 0 supernet steps skip that stage; every other stage must train
        if (steps is not None and steps < (0 if stage == "supernet" else 1)) or (epochs is not None and not epochs > 0):
            key, value = (f"{stage}.steps", steps) if steps is not None else (f"{stage}.epochs", epochs)
            raise ConfigError(f"{_where(path, key)} must be positive, got {value!r}")
        stages[stage] = StageSteps(steps, None if epochs is None else float(epochs))
    solo = _typed(raw.get("supernet", {}), "supernet.solo", bool, path, "true or false", False)
    seed = _typed(raw, "seed", int, path, "an integer", 0)
    device = _typed(raw, "device", str, path, 'a torch device ("cpu", "cuda:0")', "cpu")
    out = Path(_typed(raw, "out", str, path, "a folder path", f"runs/{path.stem}"))
    evaluate = raw.get("evaluate", {})
    preferences = _typed(evaluate, "evaluate.preferences", list, path, "a list of lists of numbers", None)
    if preferences is not None and not all(
        isinstance(p, list) and p and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p) for p in preferences
    ):
        raise ConfigError(f"{_where(path, 'evaluate.preferences')} must be a list of lists of numbers, got {preferences!r}")
    budgets = _typed(evaluate, "evaluate.budgets", list, path, "a list of numbers in (0, 1]", None)
    if budgets is not None and not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 < b <= 1 for b in budgets):
        raise ConfigError(f"{_where(path, 'evaluate.budgets')} must be a list of numbers in (0, 1], got {budgets!r}")
    max_batches = _typed(evaluate, "evaluate.max_batches", int, path, "a positive integer", 20)
    if max_batches < 1:
        raise ConfigError(f"{_where(path, 'evaluate.max_batches')} must be a positive integer, got {max_batches}")
    return RunConfig(
        path=path, tasks=tasks, data=source, backbone=name, batch_size=batch_size, data_options=data_options,
        backbone_options=backbone_options, stages=stages, preset=preset, checkpoint_every=checkpoint_every,
        seed=seed, device=device, out=out,
        preferences=preferences, budgets=None if budgets is None else [float(b) for b in budgets],
        max_batches=max_batches, solo=solo, raw=dict(raw),
    )


def resolve_attribute(spec: str, key: str) -> Any:
    """Import ``"package.module:attribute"`` (dots in the attribute walk into it); errors name ``key``."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"key {key!r}: {spec!r} is neither a registered name nor \"module:attribute\"")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"key {key!r}: cannot import module {module_name!r} of {spec!r} ({error}); "
            "put its folder on PYTHONPATH or run from that folder"
        ) from None
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise ConfigError(f"key {key!r}: module {module_name!r} has no attribute {attribute!r} (from {spec!r})")
        value = getattr(value, part)
    return value


def resolve_tasks_spec(spec: str, key: str = "tasks") -> str:
    """Make ``spec`` usable as ``Controller(backbone, spec)``: registered names pass through;
    ``"module:attribute"`` is imported, checked and registered under ``spec`` itself, so a
    checkpoint records it and :func:`dymu.run.load_run_controller` can rebuild the tasks."""
    from .registry import _BUILTIN_TASK_SETS, TASK_SETS, register_task_set
    from .tasks import Task

    if ":" not in spec:
        if spec not in TASK_SETS and spec not in _BUILTIN_TASK_SETS:
            known = sorted(set(TASK_SETS) | set(_BUILTIN_TASK_SETS))
            raise ConfigError(f"key {key!r}: unknown task set {spec!r}; registered: {known}, or give \"module:attribute\"")
        return spec
    value = resolve_attribute(spec, key)

    def factory() -> list[Task]:
        tasks = value() if callable(value) and not isinstance(value, Task) else value
        if not isinstance(tasks, Sequence) or not tasks or not all(isinstance(t, Task) for t in tasks):
            raise ConfigError(f"key {key!r}: {spec!r} must be a list of dymu.Task (or a callable returning one), got {tasks!r}")
        return list(tasks)

    factory()  # fail here, naming the key, rather than inside the Controller
    register_task_set(spec, factory)
    return spec


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def resolve_data(spec: str, batch_size: int, seed: int, options: Mapping[str, Any] | None = None, key: str = "data.source") -> tuple:
    """``(train, val, test)`` from a built-in benchmark name or a ``"module:attribute"`` callable."""
    options = dict(options or {})
    if ":" not in spec:
        if spec not in BUILTIN_DATA:
            raise ConfigError(f"key {key!r}: unknown data {spec!r}; built in: {list(BUILTIN_DATA)}, or give \"module:attribute\"")
        from .data import load_benchmark

        return load_benchmark(spec, batch_size, seed=seed, **options)
    fn = resolve_attribute(spec, key)
    if not callable(fn):
        raise ConfigError(f"key {key!r}: {spec!r} is a {type(fn).__name__}, not a callable returning (train, val, test)")
    kwargs = dict(options)
    for name, value in (("batch_size", batch_size), ("seed", seed)):
        if name not in kwargs and _accepts(fn, name):
            kwargs[name] = value
    try:
        splits = fn(**kwargs)
    except TypeError as error:
        raise ConfigError(f"key {key!r}: calling {spec!r} with {sorted(kwargs)} failed: {error}") from None
    if not isinstance(splits, (tuple, list)) or len(splits) != 3:
        raise ConfigError(f"key {key!r}: {spec!r} must return (train, val, test), got {type(splits).__name__}")
    return tuple(splits)


def resolve_backbone(spec: str, options: Mapping[str, Any] | None = None, key: str = "backbone.name"):
    """A backbone from a registered name or a ``"module:attribute"`` factory (registered under ``spec``)."""
    import dymu.backbones  # noqa: F401  (registers the built-in factories)

    from .registry import BACKBONES, register_backbone

    if ":" in spec and spec not in BACKBONES:
        factory = resolve_attribute(spec, key)
        if not callable(factory):
            raise ConfigError(f"key {key!r}: {spec!r} is a {type(factory).__name__}, not a backbone factory")
        register_backbone(spec, factory)
    if spec not in BACKBONES:
        raise ConfigError(f"key {key!r}: unknown backbone {spec!r}; registered: {sorted(BACKBONES)}, or give \"module:attribute\"")
    try:
        return BACKBONES[spec](**dict(options or {}))
    except TypeError as error:
        raise ConfigError(f"key 'backbone.options': {spec!r} does not take {dict(options or {})}: {error}") from None


def stage_steps(config: RunConfig, n_batches: int | None) -> dict[str, int]:
    """Steps per stage: explicit ``steps``; ``epochs`` times ``n_batches`` (batches per pass over the
    training data); else the preset's default (see the module docstring)."""
    out = {}
    for stage in STAGES:
        chosen = config.stages.get(stage, StageSteps())
        if chosen.steps is not None:
            out[stage] = chosen.steps
        elif chosen.epochs is not None:
            if n_batches is None:
                raise ConfigError(
                    f"{config.path}: [{stage}] epochs = {chosen.epochs:g} needs the training data's len() (batches per "
                    f"epoch), which it does not have; give [{stage}] steps = N instead"
                )
            out[stage] = max(1, round(chosen.epochs * n_batches))
        else:
            out[stage] = preset_steps(config.preset, stage, n_batches)
    return out


def ensure_importable(folder: str | Path) -> None:
    """Put ``folder`` first on ``sys.path`` (modules beside a config file import by their name)."""
    folder = str(Path(folder).resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
