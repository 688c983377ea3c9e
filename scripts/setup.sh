#!/usr/bin/env bash
# Create a virtual environment with everything the framework needs: bash scripts/setup.sh [VENV]
# (default .venv). torch/torchvision are pinned to the CUDA builds this project is tested with;
# Triton comes with torch. Safe to re-run: pip skips what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
"$venv/bin/python" -m pip install -q -e ".[dev]"
echo "ready: . $venv/bin/activate"
