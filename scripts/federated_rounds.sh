#!/usr/bin/env bash
# Drive federated rounds with the four subcommands, the way a user scripts them across machines.
#
#   scripts/federated_rounds.sh --config configs/sst2_minilm_offline.yaml [--rounds N] [--jobs J] [--set k=v ...]
#
# Round 0 starts from `supermask init` (skipped when round_000 exists). Each round trains every
# client (J at a time, in parallel: one process per client, as separate machines would), then
# aggregates and evaluates the new global. Steps whose output exists are skipped, so a failed
# script can simply be re-run. On real machines replace the `supermask train-client` line with
# your scheduler (ssh, slurm, k8s) and share run_dir through a common folder or bucket.
set -euo pipefail

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

config="" rounds="" jobs=1 sets=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config|-c) config="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --jobs|-j) jobs="$2"; shift 2 ;;
    --set) sets+=(--set "$2"); shift 2 ;;
    -h|--help) usage ;;
    *) echo "error: unknown argument '$1'" >&2; usage ;;
  esac
done
[[ -n "$config" ]] || { echo "error: --config is required" >&2; usage; }
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "error: --jobs must be a positive integer" >&2; exit 2; }

sm=(supermask)
command -v supermask >/dev/null || sm=(python -m supermask_cli)

# Read resolved values from the config (with overrides) through the package's own loader.
read -r run_dir num_clients cfg_rounds < <(python - "$config" "${sets[@]}" <<'PY'
import sys
from supermask_cli.config import load_config
args = sys.argv[2:]
overrides = [args[i + 1] for i in range(0, len(args), 2)]
cfg = load_config(sys.argv[1], overrides)
print(cfg.run_dir, cfg.federation.num_clients, cfg.federation.rounds)
PY
)
rounds="${rounds:-$cfg_rounds}"
round_dir() { printf '%s/round_%03d' "$run_dir" "$1"; }

[[ -f "$(round_dir 0)/global.safetensors" ]] || "${sm[@]}" init --config "$config" "${sets[@]}"
[[ -f "$(round_dir 0)/metrics.json" ]] || "${sm[@]}" eval --config "$config" "${sets[@]}" --round 0

for ((r = 0; r < rounds; r++)); do
  if [[ ! -f "$(round_dir $((r + 1)))/global.safetensors" ]]; then
    echo "== round $r: training $num_clients clients, $jobs at a time" >&2
    pids=() failed=0
    for ((c = 0; c < num_clients; c++)); do
      [[ -f "$(printf '%s/clients/client_%03d.safetensors' "$(round_dir $r)" "$c")" ]] && continue
      "${sm[@]}" train-client --config "$config" "${sets[@]}" --round "$r" --client "$c" &
      pids+=($!)
      if (( ${#pids[@]} >= jobs )); then
        wait "${pids[0]}" || failed=1
        pids=("${pids[@]:1}")
      fi
    done
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    (( failed == 0 )) || { echo "error: a client of round $r failed; fix it and re-run this script" >&2; exit 1; }
    "${sm[@]}" aggregate --config "$config" "${sets[@]}" --round "$r"
  fi
  [[ -f "$(round_dir $((r + 1)))/metrics.json" ]] || "${sm[@]}" eval --config "$config" "${sets[@]}" --round $((r + 1))
done
echo "done: $rounds round(s) in $run_dir" >&2
