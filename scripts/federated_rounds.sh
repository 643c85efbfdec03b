#!/usr/bin/env bash
# Drive federated rounds with the CLI's subcommands, the way a user scripts them across machines.
#
#   scripts/federated_rounds.sh --config configs/sst2_minilm_offline.yaml [--rounds N] [--jobs J] [--gpus 0,1,2,3] [--set k=v ...]
#                               [--privacy-policies DIR] [--secrets-root DIR]
#
# Round 0 starts from `supermask init`. Each round trains the round's participants (J at a time, in
# parallel: one process per client, as separate machines would; with --gpus, one client per listed
# GPU at a time through CUDA_VISIBLE_DEVICES), then aggregates and evaluates the new global. What is
# already done is asked from `supermask progress` (so a bucket run_dir works too) and skipped: re-run
# a failed or killed script to continue it; re-running a finished run does nothing. On a Slurm
# cluster use `supermask slurm`; elsewhere replace the `cli "$step"` lines with your scheduler. With
# --privacy-policies DIR, client N trains with `--privacy-policy DIR/client-N.yaml` (README "Privacy").
# With `secure_aggregation.enabled` (README "Secure aggregation") a round is: `secagg keys`, then
# `secagg shares` of every participant, `train-client` (the masked upload), `aggregate` (lists the
# survivors), `secagg unmask` of every survivor, `aggregate` again (the global), J clients at a time;
# client N keeps its secrets in `--secrets DIR/client-N` with --secrets-root DIR (outside run_dir),
# else in the CLI's default (~/.supermask/secagg/<run id>/client-N).
set -euo pipefail

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

config="" rounds="" jobs=1 gpus="" sets=() policies="" secrets_root=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config|-c) config="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --jobs|-j) jobs="$2"; shift 2 ;;
    --gpus) gpus="$2"; shift 2 ;;
    --set) sets+=(--set "$2"); shift 2 ;;
    --privacy-policies) policies="$2"; shift 2 ;;
    --secrets-root) secrets_root="$2"; shift 2 ;;
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
# cli COMMAND ARGS...: COMMAND is one or two words ("aggregate", "secagg keys")
cli() { local cmd; read -r -a cmd <<< "$1"; "${sm[@]}" "${cmd[@]}" --config "$config" "${sets[@]}" "${@:2}"; }

# What is done, per round: one `key=value ...` line each (see `supermask progress --help`).
has_global=() has_metrics=() missing=() participants=() keys_in=() shares_in=() unmask_in=() survivors=() secagg=0
read_progress() {
  local state line kv r
  state=$(cli progress "$@")
  while read -r line; do
    declare -A f=()
    for kv in $line; do f[${kv%%=*}]=${kv#*=}; done
    r=${f[round]}
    has_global[r]=${f[global]} has_metrics[r]=${f[metrics]} missing[r]=${f[clients_missing]//,/ }
    participants[r]=${f[participants]} secagg=${f[secagg]:-0}
    keys_in[r]=${f[secagg_keys]:-} shares_in[r]=${f[secagg_shares]:-} unmask_in[r]=${f[secagg_unmask]:-}
    survivors[r]=${f[secagg_survivors]:--}
  done <<< "$state"
}
read_progress ${rounds:+--rounds "$rounds"}
rounds=$(( ${#has_global[@]} - 1 ))
(( secagg )) || [[ -z "$secrets_root" ]] || { echo "error: --secrets-root: the config has no secure aggregation" >&2; exit 2; }

# todo LIST DONE: the comma-separated ids of LIST that are not in DONE, space-separated
todo() { local c; for c in ${1//,/ }; do [[ ",$2," == *",$c,"* ]] || printf '%s ' "$c"; done; }

# each STEP ROUND GPU CLIENT...: `cli STEP --round ROUND --client C` for every client, one per slot
# at a time (GPU=1: in the slot's CUDA_VISIBLE_DEVICES); fails after all ran if one of them failed.
each() {
  local step=$1 rnd=$2 gpu=$3 n=0 failed=0 c s pid args pids=()
  shift 3
  (( $# )) || return 0
  local what="$step of $# client(s)"
  [[ "$step" != train-client ]] || what="training $# client(s)"
  echo "== round $rnd: $what, ${#slots[@]} at a time" >&2
  for c in "$@"; do
    args=(--round "$rnd" --client "$c")
    [[ -z "$secrets_root" ]] || args+=(--secrets "$secrets_root/client-$c")
    [[ "$step" != train-client || -z "$policies" ]] || args+=(--privacy-policy "$policies/client-$c.yaml")
    s=$(( n++ % ${#slots[@]} ))
    if [[ -n "${pids[s]:-}" ]]; then wait "${pids[s]}" || failed=1; fi
    if (( gpu )) && [[ -n "${slots[s]}" ]]; then
      CUDA_VISIBLE_DEVICES="${slots[s]}" cli "$step" "${args[@]}" &
    else
      cli "$step" "${args[@]}" &
    fi
    pids[s]=$!
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  (( failed == 0 )) || { echo "error: $step of a client of round $rnd failed; fix it and re-run this script" >&2; exit 1; }
}

# A secure-aggregation round: every step whose messages are not all in yet, then the global.
secure_round() {
  local r=$1
  if [[ "${survivors[r]}" == - ]]; then  # no survivor list yet: the clients' steps up to the masked upload
    each "secagg keys" "$r" 0 $(todo "${participants[r]}" "${keys_in[r]}")
    each "secagg shares" "$r" 0 $(todo "${participants[r]}" "${shares_in[r]}")
    each train-client "$r" 1 ${missing[r]}
    cli aggregate --round "$r"
    read_progress --round "$r"
    [[ "${survivors[r]}" != - ]] || { echo "error: round $r: aggregate wrote no survivor list" >&2; exit 1; }
  fi
  each "secagg unmask" "$r" 0 $(todo "${survivors[r]}" "${unmask_in[r]}")
  cli aggregate --round "$r"
  read_progress --round $((r + 1))
  (( has_global[r + 1] )) || { echo "error: round $r: aggregate still waits for unmask answers (above)" >&2; exit 1; }
}

(( has_global[0] )) || cli init
(( has_metrics[0] )) || cli eval --round 0

for ((r = 0; r < rounds; r++)); do
  if (( ! has_global[r + 1] )); then
    if (( secagg )); then
      secure_round "$r"
    else
      each train-client "$r" 1 ${missing[r]}
      cli aggregate --round "$r"
    fi
  fi
  (( has_metrics[r + 1] )) || cli eval --round $((r + 1))
done
echo "done: $rounds round(s)" >&2
