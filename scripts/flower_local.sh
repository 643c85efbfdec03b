#!/usr/bin/env bash
# A real local Flower deployment of a supermask run on 127.0.0.1: one SuperLink (in-memory state,
# TLS, SuperNode authentication), one SuperNode per client (its own key, registered; node config
# client-id=i), every round run with `flwr run`, and every process it started stopped at the end. The run directory is the config's run_dir, as for
# `supermask run`; logs, pids and the Flower home go to <run_dir>/flower/.
#
#   scripts/flower_local.sh --config C [--set key=value]... [--round-timeout S] [--timeout S]
#
# Needs the Flower environment (scripts/flower_env.sh; or SUPERMASK_FLOWER_VENV=DIR).
# Exit status: 0 when every round completed, 1 when the run failed (its one-line reason on
# stderr), 2 on bad arguments or a missing Flower environment.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${SUPERMASK_FLOWER_VENV:-$REPO/.venv-flower}"
CONFIG="" SETS=() ROUND_TIMEOUT=3600 TIMEOUT=86400 STOP_WAIT=10

usage() { sed -n '7p' "$0" | sed 's/^#  *//' >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --config) CONFIG="${2:?}"; shift 2 ;;
        --set) SETS+=("${2:?}"); shift 2 ;;
        --round-timeout) ROUND_TIMEOUT="${2:?}"; shift 2 ;;
        --timeout) TIMEOUT="${2:?}"; shift 2 ;;
        -h|--help) usage ;;
        *) echo "flower_local.sh: unknown argument '$1'" >&2; usage ;;
    esac
done
[ -n "$CONFIG" ] || usage
[ -f "$CONFIG" ] || { echo "flower_local.sh: config file '$CONFIG' not found" >&2; exit 2; }
[ -x "$VENV/bin/flwr" ] || { echo "flower_local.sh: no Flower environment at $VENV; run scripts/flower_env.sh" >&2; exit 2; }
export PATH="$VENV/bin:$PATH"
PY="$VENV/bin/python"
CONFIG="$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")"

# run_dir and num_clients from the config (with overrides); a config error is reported here, once.
# run_dir travels in each SuperNode's --node-config as a double-quoted value: a control character,
# a quote or a backslash cannot, and is refused with one line (exit 2). One value per line, so
# spaces survive.
{ IFS= read -r RUN_DIR; read -r NUM_CLIENTS; read -r ROUNDS; } < <("$PY" - "$CONFIG" "${SETS[@]}" <<'EOF'
import os, sys
from supermask_cli.config import load_config
from supermask_cli.errors import SupermaskError
from supermask_cli.launch.quoting import refuse_control
try:
    cfg = load_config(sys.argv[1], sys.argv[2:])
    run_dir = os.path.abspath(refuse_control("run_dir", cfg.run_dir))
    if '"' in run_dir or "\\" in run_dir:
        raise SupermaskError(f"run_dir {run_dir!r}: holds a quote or backslash, which a SuperNode's "
                             "--node-config cannot carry; use a path without them")
except SupermaskError as exc:
    print(f"flower_local.sh: {exc}", file=sys.stderr)
    sys.exit(2)
print(run_dir, cfg.federation.num_clients, cfg.federation.rounds, sep="\n")
EOF
) || exit 2
[ -n "${RUN_DIR:-}" ] || exit 2
STATE="$RUN_DIR/flower"
mkdir -p "$STATE/logs" "$STATE/pids" "$STATE/home"
rm -f "$STATE/status.json" "$STATE"/pids/*.pid
export FLWR_HOME="$STATE/home"

read -r -a PORTS < <("$PY" - "$((NUM_CLIENTS + 1))" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)
LINK_PORT="${PORTS[0]}"

GROUPS_STARTED=()
stop_all() {
    # Each service is its own session and process group (setsid): its children (flower-superexec,
    # ServerApp, ClientApps) go with it. TERM, a bounded wait, then KILL.
    local pg deadline
    for pg in "${GROUPS_STARTED[@]}"; do kill -TERM -- "-$pg" 2>/dev/null || true; done
    deadline=$((SECONDS + STOP_WAIT))
    for pg in "${GROUPS_STARTED[@]}"; do
        while kill -0 -- "-$pg" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
        kill -KILL -- "-$pg" 2>/dev/null || true
    done
}
trap stop_all EXIT
trap 'exit 1' INT TERM

start() {  # start NAME CMD...: a new session (pid = process group id), logged to logs/NAME.log
    local name="$1"; shift
    setsid "$@" >"$STATE/logs/$name.log" 2>&1 < /dev/null &
    GROUPS_STARTED+=("$!")
    echo "$!" > "$STATE/pids/$name.pid"
}

# TLS and SuperNode authentication: a CA, the SuperLink's certificate for 127.0.0.1 and one P-384
# key pair per SuperNode (kept in flower/keys across runs); the SuperLink admits only registered
# keys, and the ServerApp binds each registered node id to its client id (flower/clients.json).
KEYS="$STATE/keys"
"$PY" -m supermask_cli.launch.flower_keys "$KEYS" "$NUM_CLIENTS"
start superlink flower-superlink --ssl-ca-certfile "$KEYS/ca.crt" --ssl-certfile "$KEYS/server.pem" \
    --ssl-keyfile "$KEYS/server.key" --enable-supernode-auth --disable-runtime-dependency-installation \
    --host 127.0.0.1 --port "$LINK_PORT"
deadline=$((SECONDS + 120))
until "$PY" -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1).close()" "$LINK_PORT" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ] || ! kill -0 "${GROUPS_STARTED[0]}" 2>/dev/null; then
        echo "flower_local.sh: the SuperLink did not start (see $STATE/logs/superlink.log)" >&2; exit 1
    fi
    sleep 0.5
done
cat > "$FLWR_HOME/config.toml" <<EOF
[superlink]
default = "supermask-local"

[superlink.supermask-local]
address = "127.0.0.1:$LINK_PORT"
root-certificates = "$KEYS/ca.crt"
EOF
NODE_IDS=()
for ((i = 0; i < NUM_CLIENTS; i++)); do
    NODE_IDS+=("$(flwr supernode register "$KEYS/node_$i.pub" supermask-local --format json 2>>"$STATE/logs/register.log" \
        | "$PY" -c 'import json, sys; out = json.load(sys.stdin); print(out["node-id"] if out.get("success") else "")' \
        2>>"$STATE/logs/register.log")")
    [ -n "${NODE_IDS[$i]}" ] || { echo "flower_local.sh: could not register SuperNode $i's key (see $STATE/logs/register.log)" >&2; exit 1; }
done
"$PY" - "$STATE/clients.json" "${NODE_IDS[@]}" <<'EOF'
import json, sys
json.dump({"nodes": {node: i for i, node in enumerate(sys.argv[2:])}}, open(sys.argv[1], "w"), indent=1)
EOF
for ((i = 0; i < NUM_CLIENTS; i++)); do
    start "supernode_$i" flower-supernode --root-certificates "$KEYS/ca.crt" --auth-supernode-private-key "$KEYS/node_$i" \
        --superlink "127.0.0.1:$LINK_PORT" --host 127.0.0.1 --port "${PORTS[$((i + 1))]}" \
        --node-config "client-id=$i work-dir=\"$STATE/nodes/client_$i\""
done

SET_JOINED="$(IFS=';'; echo "${SETS[*]:-}")"
"$PY" - "$STATE/run_config.toml" "$CONFIG" "$SET_JOINED" "$PWD" "$ROUND_TIMEOUT" "$STATE/clients.json" <<'EOF'
import json, sys
path, config, sets, workdir, round_timeout, clients = sys.argv[1:]
items = {"config": config, "set": sets, "workdir": workdir, "clients-file": clients}
lines = [f"{k} = {json.dumps(v)}" for k, v in items.items()] + [f"round-timeout = {float(round_timeout)}"]
open(path, "w").write("\n".join(lines) + "\n")
EOF

echo "flower_local.sh: SuperLink on 127.0.0.1:$LINK_PORT, $NUM_CLIENTS SuperNodes, $ROUNDS rounds; logs in $STATE/logs" >&2
set +e
timeout "$TIMEOUT" flwr run "$REPO/flower_app" supermask-local --stream --run-config "$STATE/run_config.toml" \
    > "$STATE/logs/flwr_run.log" 2>&1 &
RUN_PID=$!
# `flwr run --stream` returns when the run ends; the ServerApp's status file says how it ended.
while kill -0 "$RUN_PID" 2>/dev/null && [ ! -f "$STATE/status.json" ]; do sleep 1; done
if [ -f "$STATE/status.json" ]; then
    for _ in $(seq 1 30); do kill -0 "$RUN_PID" 2>/dev/null || break; sleep 1; done
fi
kill "$RUN_PID" 2>/dev/null
wait "$RUN_PID" 2>/dev/null
set -e

read -r STATE_WORD ERROR_LINE < <("$PY" - "$STATE/status.json" <<'EOF'
import json, sys
try:
    status = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    print("missing the ServerApp ended without a status; see the flower/logs directory")
else:
    print(status["state"], status["error"] or "-")
EOF
)
if [ "$STATE_WORD" != "done" ]; then
    echo "flower_local.sh: run failed: $ERROR_LINE" >&2
    exit 1
fi
echo "flower_local.sh: done: $RUN_DIR/round_$(printf '%03d' "$ROUNDS")/global.safetensors" >&2
