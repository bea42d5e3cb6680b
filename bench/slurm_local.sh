#!/usr/bin/env bash
# slurm_local.sh - a throw-away one-node SLURM cluster on localhost, for trying
# `kscli extract` under sbatch/srun by hand.  NOT run in CI.
#
# Needs root and Debian's SLURM packages (slurmctld slurmd slurm-client munge;
# installed with apt-get if missing).  Config, state and logs live in
# $SLURM_LOCAL_DIR (default /tmp/slurm-local); no systemd, cgroups or accounting.
#
#   bash bench/slurm_local.sh start              # idempotent; waits for node idle
#   bash bench/slurm_local.sh run -- <sbatch args>   # sbatch --wait <args>
#   bash bench/slurm_local.sh status
#   bash bench/slurm_local.sh stop               # stops what `start` started
#
# From another shell, point the client tools at the cluster with
#   export SLURM_CONF=/tmp/slurm-local/slurm.conf
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
export SLURM_CONF=$DIR/slurm.conf
NODE=localhost

die() { echo "slurm_local: $*" >&2; exit 1; }
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_pkgs() {
    local cmd
    for cmd in slurmctld slurmd sbatch munged; do
        command -v "$cmd" >/dev/null && continue
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            slurmctld slurmd slurm-client munge
        return
    done
}

write_conf() {
    mkdir -p "$DIR"/{state,spool,log,run}
    cat > "$SLURM_CONF" <<EOF
ClusterName=local
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    [[ $EUID -eq 0 ]] || die "must run as root"
    install_pkgs
    alive "$DIR/run/slurmctld.pid" || write_conf   # never rewrite under a live daemon
    if ! munge -n </dev/null >/dev/null 2>&1; then
        [[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create
        install -d -o munge -g munge -m 755 /run/munge
        runuser -u munge -- munged
        touch "$DIR/run/munged.ours"
        sleep 1
    fi
    alive "$DIR/run/slurmctld.pid" || slurmctld -f "$SLURM_CONF"
    alive "$DIR/run/slurmd.pid" || slurmd -f "$SLURM_CONF" -N "$NODE"
    local state=""
    for _ in $(seq 60); do
        state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
        case $state in
            idle|mixed|allocated) echo "slurm_local: node $NODE $state (SLURM_CONF=$SLURM_CONF)"; return ;;
            down*|drain*) scontrol update nodename="$NODE" state=resume || true ;;
        esac
        sleep 1
    done
    die "node not idle after 60s (state '$state'); see $DIR/log/"
}

stop_pid() {  # stop_pid NAME PIDFILE
    alive "$2" || return 0
    local pid; pid=$(cat "$2")
    kill "$pid"
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || { echo "slurm_local: stopped $1"; return; }; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
}

stop() {
    alive "$DIR/run/slurmctld.pid" && { scancel --user=root 2>/dev/null || true; sleep 1; }
    stop_pid slurmd "$DIR/run/slurmd.pid"
    stop_pid slurmctld "$DIR/run/slurmctld.pid"
    if [[ -e $DIR/run/munged.ours ]]; then
        stop_pid munged /run/munge/munged.pid
        rm -f "$DIR/run/munged.ours"
    fi
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) sinfo; squeue ;;
    run)
        shift; [[ ${1:-} == -- ]] && shift
        [[ $# -gt 0 ]] || die "usage: $0 run -- <sbatch args>"
        alive "$DIR/run/slurmctld.pid" || die "cluster not running; use '$0 start'"
        exec sbatch --wait "$@" ;;
    *) die "usage: $0 start|stop|status|run -- <sbatch args>" ;;
esac
