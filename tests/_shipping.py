"""Test helper: run an exported ``.pt2`` program in a fresh interpreter that cannot import dymu."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

# Runs in `python -I -S` (no site-packages processing, so no editable dymu install, no PYTHONPATH):
# only torch's own site-packages folder is put on the path.
_CHILD = r"""
import json, sys
sys.path.append(SITE)
try:
    import dymu  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("dymu must not be importable here")
import torch
program = torch.export.load(PATH).module()
case = torch.load(CASE)
out = {}
for name, x in case["inputs"].items():
    y = program(x)
    out[name] = {k: float((y[k] - case["expected"][name][k]).abs().max()) for k in case["expected"][name]}
print(json.dumps(out))
"""


def run_without_dymu(program: Path, inputs: dict[str, torch.Tensor], expected: dict, workdir: Path) -> dict:
    """Run ``program`` on ``inputs`` in a fresh interpreter that cannot import dymu; max |diff| per task."""
    case = workdir / "case.pt"
    torch.save({"inputs": inputs, "expected": expected}, case)
    site = str(Path(torch.__file__).resolve().parent.parent)
    code = f"SITE = {site!r}\nPATH = {str(program)!r}\nCASE = {str(case)!r}\n" + _CHILD
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
