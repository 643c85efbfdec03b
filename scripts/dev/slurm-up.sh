#!/usr/bin/env bash
# Start a one-node Slurm cluster on this machine, as root, without systemd (CI and local tests).
#
#   sudo scripts/dev/slurm-up.sh      # installs Debian's slurmctld, slurmd, slurm-client, munge if missing
#   scripts/dev/slurm-down.sh         # stops what this started
#
# Writes /etc/slurm/slurm.conf for one node named after `hostname` with `nproc` CPUs, one default
# partition `debug`, no accounting; state under /var/spool, logs under /var/log/slurm. Re-running
# it while the cluster is up does nothing but check that the node is idle.
set -euo pipefail

[[ $(id -u) -eq 0 ]] || { echo "error: run as root (it installs packages and starts daemons)" >&2; exit 2; }
export DEBIAN_FRONTEND=noninteractive

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge
fi

node=$(hostname -s)
cpus=$(nproc)

# munge: the key, its runtime folder, the daemon as user munge
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
  if command -v mungekey >/dev/null; then
    runuser -u munge -- mungekey --create --keyfile /etc/munge/munge.key
  else
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! pgrep -u munge -x munged >/dev/null; then
  runuser -u munge -- munged
fi
for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.2; done
munge -n | unmunge >/dev/null || { echo "error: munged is not answering" >&2; exit 1; }

# slurm.conf for this one node
install -d -m 0755 /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
conf=/etc/slurm/slurm.conf
new=$(cat <<CONF
# Written by scripts/dev/slurm-up.sh: a one-node test cluster.
ClusterName=supermask
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=600
NodeName=$node CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
)
if [[ ! -f $conf ]] || [[ "$(cat "$conf")" != "$new" ]]; then
  printf '%s\n' "$new" > "$conf"
  changed=1
else
  changed=0
fi

# daemons: (re)start when missing or when the config changed
if (( changed )) && pgrep -x slurmctld >/dev/null; then
  scontrol reconfigure || true
fi
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd

# wait (bounded) until the node is idle
for _ in $(seq 60); do
  state=$(sinfo -h -n "$node" -o '%t' 2>/dev/null | head -n1 || true)
  case "$state" in
    idle|mix|alloc) echo "slurm up: node $node ($cpus CPUs) $state, partition debug" >&2; exit 0 ;;
    down*|drain*|drng*) scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 0.5
done
echo "error: node $node did not become idle in 30 s (state '${state:-unknown}'); see /var/log/slurm/" >&2
exit 1
