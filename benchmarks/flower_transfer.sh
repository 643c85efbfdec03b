#!/usr/bin/env bash
# Time a global's transfer through a local Flower deployment (one SuperLink, NODES SuperNodes on
# 127.0.0.1): the ServerApp sends each size as a uint8 Array to every node, which replies with
# its SHA-256. Prints one JSON line per transfer.
#   benchmarks/flower_transfer.sh SIZES [NODES] [REPEATS]     e.g. 2500000,350000000 4 2
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${SUPERMASK_FLOWER_VENV:-$REPO/.venv-flower}"
SIZES="${1:?sizes}" NODES="${2:-1}" REPEATS="${3:-2}"
export PATH="$VENV/bin:$PATH"
STATE="$(mktemp -d)"
export FLWR_HOME="$STATE/home"; mkdir -p "$FLWR_HOME"
read -r -a PORTS < <("$VENV/bin/python" -c "
import socket
s=[socket.socket() for _ in range($NODES + 1)]
[x.bind(('127.0.0.1', 0)) for x in s]
print(' '.join(str(x.getsockname()[1]) for x in s))")
PGS=()
stop_all() { for pg in "${PGS[@]}"; do kill -TERM -- "-$pg" 2>/dev/null || true; done; sleep 2
             for pg in "${PGS[@]}"; do kill -KILL -- "-$pg" 2>/dev/null || true; done; rm -rf "$STATE"; }
trap stop_all EXIT
setsid flower-superlink --insecure --disable-runtime-dependency-installation --host 127.0.0.1 --port "${PORTS[0]}" \
    > "$STATE/superlink.log" 2>&1 < /dev/null & PGS+=("$!")
sleep 5
for ((i = 1; i <= NODES; i++)); do
    setsid flower-supernode --insecure --superlink "127.0.0.1:${PORTS[0]}" --host 127.0.0.1 --port "${PORTS[$i]}" \
        > "$STATE/supernode_$i.log" 2>&1 < /dev/null & PGS+=("$!")
done
printf '[superlink]\ndefault = "bench"\n[superlink.bench]\naddress = "127.0.0.1:%s"\ninsecure = true\n' "${PORTS[0]}" \
    > "$FLWR_HOME/config.toml"
printf 'sizes = "%s"\nrepeats = %s\nout = "%s"\n' "$SIZES" "$REPEATS" "$STATE/out.jsonl" > "$STATE/run.toml"
timeout 3000 flwr run "$REPO/benchmarks/flower_transfer" bench --stream --run-config "$STATE/run.toml" \
    > "$STATE/run.log" 2>&1 || true
if [ -f "$STATE/out.jsonl" ]; then cat "$STATE/out.jsonl"; else tail -20 "$STATE/run.log" >&2; exit 1; fi
