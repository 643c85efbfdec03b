#!/usr/bin/env bash
# Build .venv-flower: Flower (flwr 1.42) next to, never over, the core install.
#
# Flower pins typer<0.21, rich<15, protobuf<7 (and more) below what supermask's own CLI uses, so it
# lives in its own virtualenv. The venv sees the system site-packages (torch, transformers, ... are
# reused, not downloaded again); pip puts Flower and its older pins inside the venv, where they
# shadow the system copies for venv processes only. The core install is never touched.
#
# Usage: scripts/flower_env.sh [VENV_DIR]      (default: <repo>/.venv-flower)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$REPO/.venv-flower}"
PY="${PYTHON:-python3}"

"$PY" -c 'import torch, transformers, safetensors' 2>/dev/null || {
    echo "flower_env.sh: install the core first (scripts/setup.sh): torch/transformers not importable by $PY" >&2
    exit 2
}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv --system-site-packages "$VENV"
fi
# Flower only; supermask itself is imported from this repo through a .pth file (its dependencies are
# the core's, seen through the system site-packages; nothing of the core is resolved again).
"$VENV/bin/python" -m pip install -q "flwr==1.42.*"
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
echo "$REPO" > "$SITE/supermask-repo.pth"
"$VENV/bin/python" -c 'import flwr, supermask_cli.steps; print("flower env ready:", flwr.__version__)'
# The core install must be unchanged: its typer/rich are still the ones supermask was installed with.
"$PY" -c 'import typer, rich.console' >/dev/null
