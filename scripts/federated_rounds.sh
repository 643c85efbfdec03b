#!/usr/bin/env bash
# Drive federated rounds with the CLI's subcommands, the way a user scripts them across machines.
#
#   scripts/federated_rounds.sh --config configs/sst2_minilm_offline.yaml [--rounds N] [--jobs J] [--gpus 0,1,2,3] [--set k=v ...]
#                               [--privacy-policies DIR]
#
# Round 0 starts from `supermask init`. Each round trains the round's participants (J at a time, in
# parallel: one process per client, as separate machines would; with --gpus, one client per listed
# GPU at a time through CUDA_VISIBLE_DEVICES), then aggregates and evaluates the new global. What is
# already done is asked from `supermask progress` (so a bucket run_dir works too) and skipped: re-run
# a failed script to continue it; re-running a finished run does nothing. On a Slurm cluster use
# `supermask slurm`; elsewhere replace the `train-client` line with your scheduler. With
# --privacy-policies DIR, client N trains with `--privacy-policy DIR/client-N.yaml` (README "Privacy").
set -euo pipefail

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

config="" rounds="" jobs=1 gpus="" sets=() policies=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config|-c) config="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --jobs|-j) jobs="$2"; shift 2 ;;
    --gpus) gpus="$2"; shift 2 ;;
    --set) sets+=(--set "$2"); shift 2 ;;
    --privacy-policies) policies="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "error: unknown argument '$1'" >&2; usage ;;
  esac
done
[[ -n "$config" ]] || { echo "error: --config is required" >&2; usage; }
[[ -z "$policies" || -d "$policies" ]] || { echo "error: --privacy-policies '$policies' is not a directory" >&2; exit 2; }
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "error: --jobs must be a positive integer" >&2; exit 2; }
[[ -z "$rounds" || "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "error: --rounds must be a positive integer" >&2; exit 2; }
slots=()  # CUDA_VISIBLE_DEVICES of each parallel slot; empty entries leave it unset
if [[ -n "$gpus" ]]; then
  [[ "$gpus" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "error: --gpus takes GPU ids like 0,1,2,3" >&2; exit 2; }
  IFS=, read -r -a slots <<< "$gpus"
else
  for ((s = 0; s < jobs; s++)); do slots+=(""); done
fi

sm=(supermask)
command -v supermask >/dev/null || sm=(python -m supermask_cli)
cli() { "${sm[@]}" "$1" --config "$config" "${sets[@]}" "${@:2}"; }

# What is done, per round: one `key=value ...` line each (see `supermask progress --help`).
state=$(cli progress ${rounds:+--rounds "$rounds"})
has_global=() has_metrics=() missing=()
while read -r line; do
  declare -A f=()
  for kv in $line; do f[${kv%%=*}]=${kv#*=}; done
  r=${f[round]}
  has_global[r]=${f[global]} has_metrics[r]=${f[metrics]} missing[r]=${f[clients_missing]//,/ }
done <<< "$state"
rounds=$(( ${#has_global[@]} - 1 ))

(( has_global[0] )) || cli init
(( has_metrics[0] )) || cli eval --round 0

slot_pid=()
for ((r = 0; r < rounds; r++)); do
  if (( ! has_global[r + 1] )); then
    clients=(${missing[$r]})
    echo "== round $r: training ${#clients[@]} client(s), ${#slots[@]} at a time" >&2
    failed=0 n=0
    for c in "${clients[@]}"; do
      policy=()
      [[ -z "$policies" ]] || policy=(--privacy-policy "$policies/client-$c.yaml")
      s=$(( n++ % ${#slots[@]} ))
      if [[ -n "${slot_pid[s]:-}" ]]; then wait "${slot_pid[s]}" || failed=1; fi
      if [[ -n "${slots[s]}" ]]; then
        CUDA_VISIBLE_DEVICES="${slots[s]}" cli train-client --round "$r" --client "$c" "${policy[@]}" &
      else
        cli train-client --round "$r" --client "$c" "${policy[@]}" &
      fi
      slot_pid[s]=$!
    done
    for pid in "${slot_pid[@]}"; do wait "$pid" || failed=1; done
    slot_pid=()
    (( failed == 0 )) || { echo "error: a client of round $r failed; fix it and re-run this script" >&2; exit 1; }
    cli aggregate --round "$r"
  fi
  (( has_metrics[r + 1] )) || cli eval --round $((r + 1))
done
echo "done: $rounds round(s)" >&2
