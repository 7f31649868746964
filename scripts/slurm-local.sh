#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for ebb's cluster tests.
#
#   scripts/slurm-local.sh up      install Debian's slurm + munge if missing, configure, start, wait for an idle node
#   scripts/slurm-local.sh down    cancel jobs and stop the daemons this script started
#   scripts/slurm-local.sh env     print the export line for sbatch/squeue: eval "$(scripts/slurm-local.sh env)"
#   scripts/slurm-local.sh status  daemons and sinfo
#
# Runs as root (slurmd switches to the submitting user). State lives under
# $EBB_SLURM_ROOT (default /tmp/ebb-slurm). No systemd, no cgroups, no accounting.
set -euo pipefail

ROOT=${EBB_SLURM_ROOT:-/tmp/ebb-slurm}
NODE=$(hostname -s)
CONF=$ROOT/etc/slurm.conf
SOCKET=$ROOT/munge/munge.socket.2
export SLURM_CONF=$CONF

say() { echo "slurm-local: $*" >&2; }
fail() { say "$*"; exit 1; }

# The PID we recorded for daemon $1, if that process is still that daemon.
running() {
  local f=$ROOT/run/$1.pid
  [[ -s $f ]] && [[ $(ps -p "$(cat "$f")" -o comm= 2>/dev/null) == "$1" ]]
}

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null && command -v munged >/dev/null; then
    return
  fi
  [[ $EUID -eq 0 ]] || fail "installing slurm needs root"
  say "installing slurmctld slurmd slurm-client munge"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

configure() {
  # The node line from slurmd itself, with a little less memory than it sees
  # (a node reporting less than configured is drained as "Low RealMemory").
  local node mem
  node=$(slurmd -C | head -1)
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
  node=$(sed -e 's/^NodeName=[^ ]* //' -e 's/ RealMemory=[0-9]*//' <<<"$node")
  cat >"$CONF" <<CONF
ClusterName=ebb-local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool
SlurmctldPidFile=$ROOT/run/slurmctld.daemon.pid
SlurmdPidFile=$ROOT/run/slurmd.daemon.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MaxArraySize=10000
# Forget finished jobs after 4 s, so that sbatch --wait polls every 2 s.
MinJobAge=4
NodeName=$NODE NodeAddr=127.0.0.1 $node RealMemory=$((mem * 9 / 10)) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

start() { # start NAME COMMAND...: a foreground daemon in the background, its PID recorded
  local name=$1; shift
  nohup "$@" >"$ROOT/log/$name.out" 2>&1 </dev/null &
  echo $! >"$ROOT/run/$name.pid"
}

node_state() { sinfo -h -n "$NODE" -o %t 2>/dev/null | head -1 || true; }

up() {
  [[ $EUID -eq 0 ]] || fail "must run as root"
  install
  if running munged && running slurmctld && running slurmd && [[ $(node_state) =~ ^(idle|mix|alloc) ]]; then
    say "already up: node $NODE $(node_state)"; return
  fi
  down >/dev/null 2>&1 || true
  mkdir -p "$ROOT"/{etc,log,run,spool,munge}
  rm -rf "$ROOT/state" && mkdir -p "$ROOT/state"
  # munged insists on a world-searchable socket folder and a private key.
  chmod 755 "$ROOT" "$ROOT/munge"
  [[ -s $ROOT/munge/munge.key ]] || mungekey --create --keyfile="$ROOT/munge/munge.key" --force
  chmod 600 "$ROOT/munge/munge.key"
  rm -f "$SOCKET" "$SOCKET.lock"
  configure
  start munged munged -F --socket="$SOCKET" --key-file="$ROOT/munge/munge.key" \
    --pid-file="$ROOT/run/munged.daemon.pid" --seed-file="$ROOT/munge/seed" --log-file="$ROOT/log/munged.log"
  for _ in $(seq 50); do [[ -S $SOCKET ]] && break; sleep 0.1; done
  munge -S "$SOCKET" -n </dev/null | unmunge -S "$SOCKET" >/dev/null || fail "munged does not answer: $(cat "$ROOT/log/munged.out")"
  start slurmctld slurmctld -D -i -f "$CONF"
  start slurmd slurmd -D -N "$NODE" -f "$CONF"
  local t0=$SECONDS state=
  while (( SECONDS - t0 < 60 )); do
    state=$(node_state)
    if [[ $state == idle ]]; then say "up in $((SECONDS - t0)) s: node $NODE idle"; return; fi
    running slurmctld && running slurmd || break
    sleep 0.5
  done
  say "node $NODE not idle (state '$state'); logs:"
  tail -n 20 "$ROOT"/log/*.log "$ROOT"/log/*.out >&2 || true
  down || true
  exit 1
}

stop() { # stop NAME...: SIGTERM, up to 10 s, then SIGKILL
  local name pid
  for name in "$@"; do
    running "$name" || { rm -f "$ROOT/run/$name.pid"; continue; }
    pid=$(cat "$ROOT/run/$name.pid"); rm -f "$ROOT/run/$name.pid"
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}

down() {
  if running slurmctld; then
    local jobs; jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ' || true)
    if [[ -n ${jobs// } ]]; then
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 50); do [[ -z $(squeue -h 2>/dev/null) ]] && break; sleep 0.2; done
    fi
  fi
  stop slurmd slurmctld
  stop munged
  say "down"
}

status() {
  for name in munged slurmctld slurmd; do
    if running $name; then echo "$name: running (pid $(cat "$ROOT/run/$name.pid"))"; else echo "$name: stopped"; fi
  done
  if running slurmctld; then sinfo; fi
}

# Daemons and packages need root: go through sudo when it asks no password.
if [[ ${1:-} == up || ${1:-} == down ]] && [[ $EUID -ne 0 ]] && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  exec sudo -n EBB_SLURM_ROOT="$ROOT" bash "$0" "$@"
fi

case ${1:-} in
  up) up ;;
  down) down ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  status) status ;;
  *) fail "usage: $0 up|down|env|status" ;;
esac
