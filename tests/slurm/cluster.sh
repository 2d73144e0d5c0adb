#!/usr/bin/env bash
# A real single-node SLURM test cluster (munged + slurmctld + slurmd) that lives in one directory.
#
#   cluster.sh install            install slurmctld slurmd slurm-client munge from Debian if missing
#   cluster.sh start DIR          install if needed, start the daemons, wait until a probe job ran;
#                                 prints `export SLURM_CONF=DIR/slurm.conf` (also written to DIR/env.sh)
#   cluster.sh stop DIR           cancel remaining jobs, end exactly the daemons started in DIR; idempotent
#   cluster.sh status DIR         one line per daemon; exit 0 when all three run
#   cluster.sh exec DIR CMD...    run CMD with the cluster's environment (SLURM_CONF)
#
# Config, state, logs, pid files and the munge socket all live under DIR. Runs as root, without
# systemd. Environment overrides: TEST_SLURM_CTLD_PORT (6817), TEST_SLURM_SLURMD_PORT (6818),
# TEST_SLURM_CLUSTER_NAME (ubtest), TEST_SLURM_CPUS (advertise this many CPUs instead of the real
# count), TEST_SLURM_REAL_MEMORY (MB; default 95% of what `slurmd -C` reports),
# TEST_SLURM_START_TIMEOUT (seconds per start phase, 20), TEST_SLURM_VERBOSE=1 (phase timings),
# TEST_SLURM_GRACE_TIME (seconds a preempted scavenger job gets before it is killed, 3).
#
# Exit status: 0 ok, 1 a daemon failed to start or stop, 2 usage, 3 packages missing and not
# installable, 4 not root.
set -euo pipefail

PROG=cluster.sh
PACKAGES=(slurmctld slurmd slurm-client munge)
export PATH="$PATH:/usr/sbin:/sbin"
POLL=0.05
START_TIMEOUT=${TEST_SLURM_START_TIMEOUT:-20}
LAUNCHED=()  # pids of the daemons this invocation started (ended again if the start fails)

die() {  # die STATUS MESSAGE [LOGFILE]: one clear line, then the log's tail (indented)
    local status=$1 msg=$2 log=${3:-} pid
    echo "$PROG: $msg${log:+ (log: $log)}" >&2
    if [[ -n $log && -s $log ]]; then
        tail -n 15 "$log" | sed 's/^/    /' >&2
    fi
    for pid in "${LAUNCHED[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    exit "$status"
}

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
deadline() { awk -v s="$1" -v n="$(now)" 'BEGIN { printf "%.3f", n + s }'; }
# before DEADLINE: true while the wall clock is before DEADLINE (seconds since the epoch, fractional).
before() { awk -v d="$1" -v n="$(now)" 'BEGIN { exit !(n < d) }'; }
# phase T0 WHAT: with TEST_SLURM_VERBOSE=1, say how long after T0 the start-up reached WHAT.
phase() { [[ -z ${TEST_SLURM_VERBOSE:-} ]] || echo "$PROG: +$(elapsed "$1") s $2" >&2; }

have_binaries() {
    local b
    for b in munged munge unmunge slurmctld slurmd sbatch squeue scancel sinfo scontrol; do
        command -v "$b" >/dev/null 2>&1 || return 1
    done
}

cmd_install() {
    if have_binaries; then return 0; fi
    (( EUID == 0 )) || die 4 "must run as root to install ${PACKAGES[*]}"
    command -v apt-get >/dev/null 2>&1 || die 3 "apt-get not found: cannot install ${PACKAGES[*]}"
    local t0 log
    t0=$(now)
    log=$(mktemp "${TMPDIR:-/tmp}/slurm-install.XXXXXX")
    local -a apt=(apt-get -y -q --no-install-recommends -o DPkg::Lock::Timeout=120)
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${PACKAGES[@]}" >"$log" 2>&1; then
        # Most often the package lists are missing (fresh image): fetch them once and retry.
        DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=120 update >>"$log" 2>&1 || true
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${PACKAGES[@]}" >>"$log" 2>&1 \
            || die 3 "apt-get install ${PACKAGES[*]} failed" "$log"
    fi
    have_binaries || die 3 "installed ${PACKAGES[*]} but the binaries are still missing" "$log"
    rm -f "$log"
    echo "$PROG: installed ${PACKAGES[*]} in $(elapsed "$t0") s" >&2
}

# Resolve DIR to an absolute, existing directory (created if needed) and set the paths in it.
set_paths() {
    [[ -n ${1:-} ]] || usage
    mkdir -p "$1"
    DIR=$(cd "$1" && pwd -P)
    [[ $DIR =~ ^[A-Za-z0-9_./+-]+$ ]] || die 2 "DIR must be a path without spaces or special characters: $DIR"
    CONF=$DIR/slurm.conf
    ENVFILE=$DIR/env.sh
    RUN=$DIR/run
    LOGS=$DIR/log
    MUNGE=$DIR/munge
    SOCKET=$MUNGE/munge.socket
    (( ${#SOCKET} < 100 )) || die 2 "DIR is too long for a unix socket path: $SOCKET"
}

# alive PID: the process exists and is not a zombie.
alive() {
    local state
    [[ -n ${1:-} && -r /proc/$1/stat ]] || return 1
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null || true)
    [[ -n $state && $state != Z && $state != X ]]
}

# pid_of NAME: the pid from NAME's pid file in DIR when that process is alive and really NAME.
pid_of() {
    local name=$1 file pid comm
    file=$RUN/$name.pid
    [[ -s $file ]] || return 0
    pid=$(tr -dc '0-9' <"$file")
    alive "$pid" || return 0
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    [[ $comm == "$name"* ]] || return 0
    echo "$pid"
}

# wait_for SECONDS WHAT LOG PID -- CMD...: poll CMD until it succeeds; fail when process PID died
# or the time is up, showing LOG.
wait_for() {
    local secs=$1 what=$2 log=$3 pid=$4 end
    shift 5
    end=$(deadline "$secs")
    until "$@" >/dev/null 2>&1; do
        alive "$pid" || die 1 "$(cat "/proc/$pid/comm" 2>/dev/null || echo daemon) exited while waiting for $what" "$log"
        before "$end" || die 1 "timed out after ${secs} s waiting for $what$(wait_detail "$what")" "$log"
        sleep "$POLL"
    done
}

# wait_detail WHAT: what slurmctld says about the node, when WHAT was about the node.
wait_detail() {
    [[ $1 == node* ]] || return 0
    local s
    s=$(sinfo -h -N -n "$NODENAME" -o '%T, reason: %E' 2>/dev/null | sort -u || true)
    echo " (node state: ${s:-unknown})"
}

# launch NAME CMD...: run a daemon in the foreground (so that its pid is known at once and an early
# death is seen), in its own session, output appended to DIR/log/NAME.out. Sets LAST_PID.
launch() {
    local name=$1
    shift
    setsid "$@" </dev/null >>"$LOGS/$name.out" 2>&1 &
    LAST_PID=$!
    LAUNCHED+=("$LAST_PID")
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

write_conf() {
    local ctld_port=$1 slurmd_port=$2 cname=$3 node_line mem overrides="" grace=${TEST_SLURM_GRACE_TIME:-3}
    node_line=$(slurmd -C | head -n 1)
    [[ $node_line == NodeName=* ]] || die 1 "unexpected output of slurmd -C: $node_line"
    NODENAME=$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<<"$node_line")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
    mem=${TEST_SLURM_REAL_MEMORY:-$(( mem * 95 / 100 ))}
    node_line=$(awk -v m="$mem" '{ sub(/RealMemory=[0-9]+/, "RealMemory=" m); print }' <<<"$node_line")
    if [[ -n ${TEST_SLURM_CPUS:-} ]]; then
        # Advertise more (or fewer) CPUs than the machine has; slurmd accepts it with config_overrides.
        node_line="NodeName=$NODENAME CPUs=$TEST_SLURM_CPUS RealMemory=$mem"
        overrides="SlurmdParameters=config_overrides"
    fi
    cat >"$CONF" <<EOF
# Generated by tests/slurm/cluster.sh: a one-node test cluster living in $DIR
ClusterName=$cname
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/state/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGS/jobcomp.txt
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
Epilog=/bin/true
ReturnToService=2
KillWait=5
InactiveLimit=0
$overrides
$node_line NodeAddr=127.0.0.1 NodeHostname=$NODENAME State=UNKNOWN
# Two partitions on the same node: debug (the normal one) and scavenger, whose jobs a debug job
# preempts. Measured on 22.05: the grace starts at once (the job's end becomes now + GraceTime;
# SIGTERM goes to job steps only, not to the batch script), at its end every process gets
# SIGCONT+SIGTERM and SIGKILL KillWait later; the job ends PREEMPTED. partition_prio needs no
# accounting daemon (a preemptible QOS would).
PreemptType=preempt/partition_prio
PreemptMode=CANCEL
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=2
PartitionName=scavenger Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=CANCEL GraceTime=$grace
EOF
}

munge_ok() { munge -n -S "$SOCKET" | unmunge -S "$SOCKET"; }
ctld_up() { [[ $(scontrol ping 2>/dev/null) == *"is UP"* ]]; }
# The node is in both partitions: sinfo prints it once per partition.
node_idle() { [[ $(sinfo -h -N -n "$NODENAME" -o %t 2>/dev/null | sort -u) == idle ]]; }
has_pid_file() { [[ -n $(pid_of "$1") ]]; }

job_done() {  # job_done JOBID: true once the job is finished (or already purged)
    local state
    state=$(squeue -h -j "$1" -t all -o %T 2>/dev/null) || return 0
    [[ -z $state || $state =~ ^(COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|PREEMPTED)$ ]]
}

start_munged() {
    mkdir -p "$MUNGE"
    chmod 0755 "$MUNGE"  # munged and its clients need the socket directory to be 0755
    if [[ ! -s $MUNGE/munge.key ]]; then
        mungekey --create --keyfile="$MUNGE/munge.key" --force >/dev/null 2>&1 \
            || dd if=/dev/urandom of="$MUNGE/munge.key" bs=1024 count=1 2>/dev/null
    fi
    chmod 0600 "$MUNGE/munge.key"
    rm -f "$SOCKET" "$SOCKET.lock"
    # --force: DIR may sit below a 0700 directory (pytest's tmp dirs); munged then only warns that
    # non-root users cannot reach the socket. Every daemon and job here runs as root.
    launch munged munged --foreground --force --socket="$SOCKET" --key-file="$MUNGE/munge.key" \
        --pid-file="$RUN/munged.pid" --log-file="$LOGS/munged.log" --seed-file="$MUNGE/munged.seed"
    wait_for "$START_TIMEOUT" "the munge socket" "$LOGS/munged.log" "$LAST_PID" -- munge_ok
}

cmd_start() {
    set_paths "${1:-}"
    (( EUID == 0 )) || die 4 "must run as root"
    cmd_install
    if [[ -n $(pid_of slurmctld)$(pid_of slurmd)$(pid_of munged) ]]; then
        die 1 "a cluster is already running in $DIR: run '$0 stop $DIR' first"
    fi
    local t0 ctld_port=${TEST_SLURM_CTLD_PORT:-6817} slurmd_port=${TEST_SLURM_SLURMD_PORT:-6818}
    local cname=${TEST_SLURM_CLUSTER_NAME:-ubtest}
    t0=$(now)
    port_free "$ctld_port" || die 1 "port $ctld_port is in use: set TEST_SLURM_CTLD_PORT"
    port_free "$slurmd_port" || die 1 "port $slurmd_port is in use: set TEST_SLURM_SLURMD_PORT"
    # A fresh start: no jobs, node state or logs from an earlier run in the same DIR.
    rm -rf "$DIR/state" "$RUN" "$LOGS"
    mkdir -p "$DIR/state/ctld" "$DIR/state/slurmd" "$RUN" "$LOGS" "$DIR/jobs"
    write_conf "$ctld_port" "$slurmd_port" "$cname"
    export SLURM_CONF=$CONF
    printf 'export SLURM_CONF=%s\n' "$CONF" >"$ENVFILE"

    start_munged
    wait_for "$START_TIMEOUT" "munged's pid file" "$LOGS/munged.log" "$LAST_PID" -- has_pid_file munged
    phase "$t0" "munged up"
    launch slurmctld slurmctld -D -f "$CONF"
    wait_for "$START_TIMEOUT" "slurmctld to answer" "$LOGS/slurmctld.log" "$LAST_PID" -- ctld_up
    wait_for "$START_TIMEOUT" "slurmctld's pid file" "$LOGS/slurmctld.log" "$LAST_PID" -- has_pid_file slurmctld
    phase "$t0" "slurmctld answers"
    local ctld_pid=$LAST_PID
    launch slurmd slurmd -D -f "$CONF" -N "$NODENAME"
    local slurmd_pid=$LAST_PID
    wait_for "$START_TIMEOUT" "node $NODENAME to be idle" "$LOGS/slurmd.log" "$slurmd_pid" -- node_idle
    wait_for "$START_TIMEOUT" "slurmd's pid file" "$LOGS/slurmd.log" "$slurmd_pid" -- has_pid_file slurmd
    phase "$t0" "node idle"
    # slurmctld's first scheduling pass comes a few seconds after it starts: run one probe job.
    local probe
    probe=$(sbatch --parsable --job-name=probe --chdir="$DIR/jobs" --output=/dev/null --wrap true 2>&1) \
        || die 1 "probe job could not be submitted: $probe" "$LOGS/slurmctld.log"
    probe=${probe%%;*}
    wait_for "$START_TIMEOUT" "probe job $probe to finish" "$LOGS/slurmctld.log" "$ctld_pid" -- job_done "$probe"
    phase "$t0" "probe job $probe finished"
    [[ $(squeue -h -j "$probe" -t all -o %T 2>/dev/null || true) =~ ^(COMPLETED)?$ ]] \
        || die 1 "probe job $probe did not complete" "$LOGS/slurmd.log"
    wait_for "$START_TIMEOUT" "node $NODENAME to be idle again" "$LOGS/slurmd.log" "$slurmd_pid" -- node_idle
    echo "$PROG: cluster '$cname' up in $(elapsed "$t0") s" \
        "(node $NODENAME, slurmctld port $ctld_port, slurmd port $slurmd_port)" >&2
    echo "export SLURM_CONF=$CONF"
}

# stop_daemon NAME: SIGTERM the daemon from its pid file, wait until it is gone, SIGKILL after 15 s.
stop_daemon() {
    local name=$1 pid end
    pid=$(pid_of "$name")
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    end=$(deadline 15)
    while alive "$pid"; do
        if ! before "$end"; then
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
            if alive "$pid"; then die 1 "could not stop $name (pid $pid)"; fi
            break
        fi
        sleep "$POLL"
    done
}

cmd_stop() {
    set_paths "${1:-}"
    export SLURM_CONF=$CONF
    if [[ -n $(pid_of slurmctld) && -n $(pid_of slurmd) && -n $(pid_of munged) ]]; then
        # With proctrack/linuxproc, job steps outlive slurmd: cancel every job first and wait.
        local end
        scancel --quiet --user=root 2>/dev/null || true
        end=$(deadline 15)
        while [[ -n $(squeue -h -o %i 2>/dev/null || true) ]] && before "$end"; do
            sleep "$POLL"
        done
    fi
    stop_daemon slurmd
    stop_daemon slurmctld
    stop_daemon munged
}

cmd_status() {
    set_paths "${1:-}"
    local name pid ok=0
    for name in munged slurmctld slurmd; do
        pid=$(pid_of "$name")
        if [[ -n $pid ]]; then echo "$name running (pid $pid)"; else echo "$name stopped"; ok=1; fi
    done
    return "$ok"
}

cmd_exec() {
    set_paths "${1:-}"
    shift
    [[ $# -gt 0 ]] || usage
    [[ -f $CONF ]] || die 1 "no cluster configuration in $DIR"
    export SLURM_CONF=$CONF
    exec "$@"
}

main() {
    local cmd=${1:-}
    [[ $# -gt 0 ]] && shift
    case $cmd in
        install) cmd_install ;;
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        status) cmd_status "$@" ;;
        exec) cmd_exec "$@" ;;
        *) usage ;;
    esac
}

main "$@"
