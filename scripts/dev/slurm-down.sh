#!/usr/bin/env bash
# Stop the one-node Slurm cluster that scripts/dev/slurm-up.sh started (slurmd, slurmctld, munged).
set -euo pipefail

[[ $(id -u) -eq 0 ]] || { echo "error: run as root" >&2; exit 2; }

stop() {  # stop NAME [USER]: TERM, wait up to 10 s, then KILL
  local name=$1 pids
  pids=$(pgrep -x "$name" ${2:+-u "$2"} || true)
  [[ -n $pids ]] || return 0
  kill $pids 2>/dev/null || true
  for _ in $(seq 50); do
    pgrep -x "$name" ${2:+-u "$2"} >/dev/null || return 0
    sleep 0.2
  done
  kill -9 $pids 2>/dev/null || true
}

stop slurmd
stop slurmctld
stop munged munge
echo "slurm down" >&2
