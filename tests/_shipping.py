"""Test helper: run code, or an exported ``.pt2`` program, in a fresh interpreter that cannot import dymu."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

# Runs in `python -I -S` (no site-packages processing, so no editable dymu install, no PYTHONPATH, no
# current folder): only torch's own site-packages folder is put on the path.
_BEFORE = r"""
import sys
sys.path.append(SITE)
try:
    import dymu  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("dymu must not be importable here")
"""
_AFTER = r"""
assert not [m for m in sys.modules if m == "dymu" or m.startswith("dymu.")], "something imported dymu"
"""

_PROGRAM = r"""
import json
import torch
program = torch.export.load(PATH).module()
case = torch.load(CASE)
out = {}
for name, x in case["inputs"].items():
    y = program(x)
    out[name] = {k: float((y[k] - case["expected"][name][k]).abs().max()) for k in case["expected"][name]}
print(json.dumps(out))
"""


def run_isolated(code: str, workdir: Path) -> subprocess.CompletedProcess:
    """Run ``code`` with ``python -I -S -c`` in ``workdir``: torch importable, dymu not (checked before
    and after ``code`` runs). Fails the test on a non-zero exit; returns the finished process."""
    site = str(Path(torch.__file__).resolve().parent.parent)
    source = f"SITE = {site!r}\n" + _BEFORE + code + "\n" + _AFTER
    done = subprocess.run([sys.executable, "-I", "-S", "-c", source], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def run_without_dymu(program: Path, inputs: dict[str, torch.Tensor], expected: dict, workdir: Path) -> dict:
    """Run ``program`` on ``inputs`` in a fresh interpreter that cannot import dymu; max |diff| per task."""
    case = workdir / "case.pt"
    torch.save({"inputs": inputs, "expected": expected}, case)
    done = run_isolated(f"PATH = {str(program)!r}\nCASE = {str(case)!r}\n" + _PROGRAM, workdir)
    return json.loads(done.stdout.strip().splitlines()[-1])
