#!/usr/bin/env bash
# A real multi-node SLURM test cluster on one machine: compute nodes in network namespaces.
#
#   netns.sh start DIR            install if needed; bridge, namespaces, munged, slurmctld, one slurmd
#                                 per node; wait until a probe job ran on every node;
#                                 prints `export SLURM_CONF=DIR/slurm.conf` (also in DIR/env.sh)
#   netns.sh stop DIR             cancel jobs, end the daemons and every process in the nodes'
#                                 namespaces, delete namespaces, veths and bridge; idempotent
#   netns.sh status DIR           one line per daemon and node; exit 0 when all run
#   netns.sh node-kill DIR NODE   kill NODE's slurmd and every process in its namespace (a dead node)
#   netns.sh node-start DIR NODE  start NODE's slurmd again and resume the node in SLURM
#   netns.sh link DIR NODE up|down  NODE's link on the bridge (its processes keep running)
#   netns.sh exec DIR NODE CMD... run CMD inside NODE's namespace (SLURM_CONF set)
#
# Layout: the "login" side is the root network namespace (munged, slurmctld, the balancer, the
# clients, pytest); it holds LOGIN_ADDR (SUBNET.1) on a bridge. Node i is the namespace
# PREFIX-node<i> at SUBNET.(10+i), joined to the bridge by a veth pair (PREFIX-h<i> on the login
# side, PREFIX-n<i> inside), running `slurmd -D -N node<i>` with its own spool, log and pid file
# (%n in slurm.conf). One munge: its socket is a path on the shared filesystem, which every
# namespace sees. Jobs are forked by the node's slurmd, so they (and their model servers) live in
# that namespace and are reached at its address. Config, state, logs and pid files live in DIR.
# Processes enter a node with `nsenter --net=/run/netns/NS` (network namespace only), not `ip netns
# exec`, which also remounts /sys in a new mount namespace and so hides /sys/fs/cgroup from slurmd.
#
# Environment: TEST_MN_NODES (3), TEST_MN_CPUS (CPUs each node advertises, 2), TEST_MN_MEMORY (MB
# each node advertises, 2000), TEST_MN_SUBNET (first three octets, 10.77.0), TEST_MN_PREFIX (name
# prefix of namespaces, links and bridge, ubmn), TEST_SLURM_CTLD_PORT (6827), TEST_SLURM_SLURMD_PORT
# (6828), TEST_MN_SLURMD_TIMEOUT (seconds before slurmctld calls a silent node down, 30),
# TEST_SLURM_START_TIMEOUT (seconds per start phase, 30), TEST_SLURM_VERBOSE=1 (phase timings),
# TEST_SLURM_GRACE_TIME (seconds a preempted job of partition scavenger gets, 3).
# Exit status: 0 ok, 1 failure, 2 usage, 3 packages missing and not installable, 4 not root.
set -euo pipefail

PROG=netns.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CLUSTER_SH=$HERE/../slurm/cluster.sh
export PATH="$PATH:/usr/sbin:/sbin"
POLL=0.05
START_TIMEOUT=${TEST_SLURM_START_TIMEOUT:-30}
LAUNCHED=()

die() {  # die STATUS MESSAGE [LOGFILE]
    local status=$1 msg=$2 log=${3:-}
    echo "$PROG: $msg${log:+ (log: $log)}" >&2
    if [[ -n $log && -s $log ]]; then tail -n 15 "$log" | sed 's/^/    /' >&2; fi
    exit "$status"
}

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
deadline() { awk -v s="$1" -v n="$(now)" 'BEGIN { printf "%.3f", n + s }'; }
before() { awk -v d="$1" -v n="$(now)" 'BEGIN { exit !(n < d) }'; }
phase() { [[ -z ${TEST_SLURM_VERBOSE:-} ]] || echo "$PROG: +$(elapsed "$1") s $2" >&2; }

alive() {
    local state
    [[ -n ${1:-} && -r /proc/$1/stat ]] || return 1
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null || true)
    [[ -n $state && $state != Z && $state != X ]]
}

# Paths in DIR, and the network names: saved at start in DIR/net.env so that stop and the node
# commands find the same names whatever the environment says later.
set_paths() {
    [[ -n ${1:-} ]] || usage
    mkdir -p "$1"
    DIR=$(cd "$1" && pwd -P)
    [[ $DIR =~ ^[A-Za-z0-9_./+-]+$ ]] || die 2 "DIR must be a path without spaces or special characters: $DIR"
    CONF=$DIR/slurm.conf
    RUN=$DIR/run
    LOGS=$DIR/log
    MUNGE=$DIR/munge
    SOCKET=$MUNGE/munge.socket
    (( ${#SOCKET} < 100 )) || die 2 "DIR is too long for a unix socket path: $SOCKET"
    if [[ -s $DIR/net.env ]]; then
        # shellcheck source=/dev/null
        source "$DIR/net.env"
    else
        NODES=${TEST_MN_NODES:-3}
        SUBNET=${TEST_MN_SUBNET:-10.77.0}
        PREFIX=${TEST_MN_PREFIX:-ubmn}
    fi
    [[ $NODES =~ ^[0-9]+$ ]] && (( NODES >= 1 && NODES <= 200 )) || die 2 "TEST_MN_NODES must be 1..200"
    [[ $SUBNET =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die 2 "TEST_MN_SUBNET must be three octets, e.g. 10.77.0"
    [[ $PREFIX =~ ^[a-z][a-z0-9]{0,7}$ ]] || die 2 "TEST_MN_PREFIX must be 1-8 lowercase letters/digits"
    BRIDGE=$PREFIX-br
    LOGIN_ADDR=$SUBNET.1
}

ns_of() { echo "$PREFIX-node$1"; }         # node index -> namespace
addr_of() { echo "$SUBNET.$((10 + $1))"; } # node index -> its address
index_of() {                               # node name (node2) or index (2) -> index
    local i=${1#node}
    [[ $i =~ ^[0-9]+$ ]] && (( i >= 1 && i <= NODES )) || die 2 "no node $1 (nodes: node1..node$NODES)"
    echo "$i"
}

pid_of() {  # pid_of NAME: the pid in RUN/NAME.pid when alive
    local file=$RUN/$1.pid pid
    [[ -s $file ]] || return 0
    pid=$(tr -dc '0-9' <"$file")
    alive "$pid" && echo "$pid" || true
}

wait_for() {  # wait_for SECONDS WHAT LOG PID -- CMD...
    local secs=$1 what=$2 log=$3 pid=$4 end
    shift 5
    end=$(deadline "$secs")
    until "$@" >/dev/null 2>&1; do
        alive "$pid" || die 1 "$(cat "/proc/$pid/comm" 2>/dev/null || echo daemon) exited while waiting for $what" "$log"
        before "$end" || die 1 "timed out after ${secs} s waiting for $what" "$log"
        sleep "$POLL"
    done
}

launch() {  # launch NAME CMD...: a daemon in its own session, pid in LAST_PID
    local name=$1
    shift
    setsid "$@" </dev/null >>"$LOGS/$name.out" 2>&1 &
    LAST_PID=$!
    LAUNCHED+=("$LAST_PID")
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# -- the network -------------------------------------------------------------------------------
net_up() {
    local i ns
    command -v ip >/dev/null 2>&1 || install_iproute
    local clash  # a route covering the subnet (the default route aside) or inside it
    clash=$( { ip -4 route show to match "$SUBNET.0/24"; ip -4 route show root "$SUBNET.0/24"; } | grep -v '^default' | head -n 1 || true)
    [[ -z $clash ]] || die 1 "a route into $SUBNET.0/24 exists already ($clash): set TEST_MN_SUBNET"
    ! ip link show "$BRIDGE" >/dev/null 2>&1 || die 1 "link $BRIDGE exists already: stop the other cluster or set TEST_MN_PREFIX"
    ip link add "$BRIDGE" type bridge
    ip addr add "$LOGIN_ADDR/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    for ((i = 1; i <= NODES; i++)); do
        ns=$(ns_of "$i")
        ip netns add "$ns"
        ip link add "$PREFIX-h$i" type veth peer name "$PREFIX-n$i"
        ip link set "$PREFIX-n$i" netns "$ns"
        ip link set "$PREFIX-h$i" master "$BRIDGE" up
        ip -n "$ns" addr add "$(addr_of "$i")/24" dev "$PREFIX-n$i"
        ip -n "$ns" link set "$PREFIX-n$i" up
        ip -n "$ns" link set lo up
    done
}

# net_down: every process left in the nodes' namespaces (all ours: we made them) killed, then the
# namespaces (their veth ends go with them), the login-side veths and the bridge deleted.
net_down() {
    local i ns pids
    for ((i = 1; i <= NODES; i++)); do
        ns=$(ns_of "$i")
        if ip netns list 2>/dev/null | awk '{ print $1 }' | grep -qx "$ns"; then
            pids=$(ip netns pids "$ns" 2>/dev/null || true)
            [[ -z $pids ]] || kill -KILL $pids 2>/dev/null || true
            ip netns del "$ns" 2>/dev/null || true
        fi
        ip link del "$PREFIX-h$i" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
}

install_iproute() {
    (( EUID == 0 )) || die 4 "must run as root to install iproute2"
    DEBIAN_FRONTEND=noninteractive apt-get -y -q --no-install-recommends -o DPkg::Lock::Timeout=120 \
        install iproute2 >/dev/null 2>&1 || {
        DEBIAN_FRONTEND=noninteractive apt-get -q update >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get -y -q --no-install-recommends install iproute2 >/dev/null 2>&1 \
            || die 3 "apt-get install iproute2 failed"
    }
}

# -- SLURM -------------------------------------------------------------------------------------
write_conf() {
    local ctld_port=$1 slurmd_port=$2 cpus=${TEST_MN_CPUS:-2} mem=${TEST_MN_MEMORY:-2000}
    local timeout=${TEST_MN_SLURMD_TIMEOUT:-30} i
    [[ $cpus =~ ^[0-9]+$ && $cpus -ge 1 ]] || die 2 "TEST_MN_CPUS must be a positive integer"
    {
        cat <<EOF
# Generated by tests/multinode/netns.sh: $NODES compute nodes in network namespaces, living in $DIR
ClusterName=${TEST_SLURM_CLUSTER_NAME:-ubmulti}
SlurmctldHost=$(hostname -s)($LOGIN_ADDR)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/state/slurmd-%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
Epilog=/bin/true
ReturnToService=2
SlurmdTimeout=$timeout
MessageTimeout=5
KillWait=5
InactiveLimit=0
EOF
        for ((i = 1; i <= NODES; i++)); do
            echo "NodeName=node$i NodeAddr=$(addr_of "$i") NodeHostname=node$i CPUs=$cpus RealMemory=$mem State=UNKNOWN"
        done
        # As in tests/slurm/cluster.sh: debug (the normal partition) and scavenger, whose jobs a
        # debug job preempts (cancelled after GraceTime), for the harvesting policies.
        echo "PreemptType=preempt/partition_prio"
        echo "PreemptMode=CANCEL"
        echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=2"
        echo "PartitionName=scavenger Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=CANCEL GraceTime=${TEST_SLURM_GRACE_TIME:-3}"
    } >"$CONF"
}

munge_ok() { munge -n -S "$SOCKET" | unmunge -S "$SOCKET"; }
ctld_up() { [[ $(scontrol ping 2>/dev/null) == *"is UP"* ]]; }
nodes_idle() { [[ $(sinfo -h -N -o %t 2>/dev/null | sort -u | tr '\n' ' ') == "idle " ]]; }
node_idle() { [[ $(sinfo -h -N -n "$1" -o %t 2>/dev/null | sort -u) == idle ]]; }
jobs_done() { [[ -z $(squeue -h -o %i 2>/dev/null) ]]; }

start_slurmd() {  # start_slurmd INDEX: slurmd of node INDEX inside its namespace
    local i=$1
    mkdir -p "$DIR/state/slurmd-node$i"
    launch "slurmd-node$i" nsenter --net="/run/netns/$(ns_of "$i")" slurmd -D -f "$CONF" -N "node$i"
}

cmd_start() {
    set_paths "${1:-}"
    (( EUID == 0 )) || die 4 "must run as root"
    local rc=0
    bash "$CLUSTER_SH" install || rc=$?
    (( rc == 0 )) || exit "$rc"
    [[ -z $(pid_of slurmctld)$(pid_of munged) ]] || die 1 "a cluster is already running in $DIR: run '$0 stop $DIR' first"
    local t0 i ctld_port=${TEST_SLURM_CTLD_PORT:-6827} slurmd_port=${TEST_SLURM_SLURMD_PORT:-6828}
    t0=$(now)
    port_free "$ctld_port" || die 1 "port $ctld_port is in use: set TEST_SLURM_CTLD_PORT"
    rm -rf "$DIR/state" "$RUN" "$LOGS"
    mkdir -p "$DIR/state/ctld" "$RUN" "$LOGS" "$DIR/jobs"
    printf 'NODES=%s\nSUBNET=%s\nPREFIX=%s\n' "$NODES" "$SUBNET" "$PREFIX" >"$DIR/net.env"
    trap 'echo "$PROG: start failed; cleaning up" >&2; cmd_stop "$DIR" >/dev/null 2>&1 || true' EXIT
    net_up
    phase "$t0" "network up"
    write_conf "$ctld_port" "$slurmd_port"
    export SLURM_CONF=$CONF
    printf 'export SLURM_CONF=%s\n' "$CONF" >"$DIR/env.sh"

    mkdir -p "$MUNGE"
    chmod 0755 "$MUNGE"
    mungekey --create --keyfile="$MUNGE/munge.key" --force >/dev/null 2>&1 \
        || dd if=/dev/urandom of="$MUNGE/munge.key" bs=1024 count=1 2>/dev/null
    chmod 0600 "$MUNGE/munge.key"
    launch munged munged --foreground --force --socket="$SOCKET" --key-file="$MUNGE/munge.key" \
        --pid-file="$RUN/munged.pid" --log-file="$LOGS/munged.log" --seed-file="$MUNGE/munged.seed"
    wait_for "$START_TIMEOUT" "the munge socket" "$LOGS/munged.log" "$LAST_PID" -- munge_ok
    phase "$t0" "munged up"
    launch slurmctld slurmctld -D -f "$CONF"
    local ctld_pid=$LAST_PID
    wait_for "$START_TIMEOUT" "slurmctld to answer" "$LOGS/slurmctld.log" "$ctld_pid" -- ctld_up
    phase "$t0" "slurmctld answers"
    for ((i = 1; i <= NODES; i++)); do start_slurmd "$i"; done
    wait_for "$START_TIMEOUT" "every node to be idle" "$LOGS/slurmctld.log" "$ctld_pid" -- nodes_idle
    phase "$t0" "nodes idle"
    # One probe job per node: each slurmd really runs a job (munge credential, spool, fork).
    local probe
    for ((i = 1; i <= NODES; i++)); do
        probe=$(sbatch --parsable --job-name=probe -w "node$i" --chdir="$DIR/jobs" --output=/dev/null \
            --wrap true 2>&1) || die 1 "probe job on node$i could not be submitted: $probe" "$LOGS/slurmctld.log"
    done
    wait_for "$START_TIMEOUT" "the probe jobs to finish" "$LOGS/slurmctld.log" "$ctld_pid" -- jobs_done
    wait_for "$START_TIMEOUT" "every node to be idle again" "$LOGS/slurmctld.log" "$ctld_pid" -- nodes_idle
    trap - EXIT
    echo "$PROG: cluster up in $(elapsed "$t0") s: $NODES nodes at $(addr_of 1)..$(addr_of "$NODES")" \
        "(namespaces $(ns_of 1)..), login $LOGIN_ADDR on $BRIDGE, slurmctld port $ctld_port" >&2
    echo "export SLURM_CONF=$CONF"
}

stop_pid() {  # stop_pid PID: SIGTERM, wait up to 10 s, then SIGKILL
    local pid=$1 end
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    end=$(deadline 10)
    while alive "$pid" && before "$end"; do sleep "$POLL"; done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
}

cmd_stop() {
    set_paths "${1:-}"
    export SLURM_CONF=$CONF
    local i end
    if [[ -n $(pid_of slurmctld) ]]; then
        scancel --quiet --user=root 2>/dev/null || true
        end=$(deadline 5)
        while ! jobs_done && before "$end"; do sleep "$POLL"; done
    fi
    for ((i = 1; i <= NODES; i++)); do stop_pid "$(pid_of "slurmd-node$i")"; done
    net_down  # whatever still runs in the nodes (jobs, model servers, a node's slurmd) is killed
    stop_pid "$(pid_of slurmctld)"
    stop_pid "$(pid_of munged)"
}

cmd_status() {
    set_paths "${1:-}"
    local name pid ok=0 i
    for name in munged slurmctld; do
        pid=$(pid_of "$name")
        if [[ -n $pid ]]; then echo "$name running (pid $pid)"; else echo "$name stopped"; ok=1; fi
    done
    for ((i = 1; i <= NODES; i++)); do
        pid=$(pid_of "slurmd-node$i")
        if [[ -n $pid ]]; then echo "node$i $(addr_of "$i") slurmd running (pid $pid)"
        else echo "node$i $(addr_of "$i") slurmd stopped"; ok=1; fi
    done
    return "$ok"
}

cmd_node_kill() {
    set_paths "${1:-}"
    local i pids
    i=$(index_of "${2:-}")
    # Everything in the namespace at once: slurmd, slurmstepd, the jobs' launchers and servers.
    pids=$(ip netns pids "$(ns_of "$i")" 2>/dev/null || true)
    [[ -z $pids ]] || kill -KILL $pids 2>/dev/null || true
}

cmd_node_start() {
    set_paths "${1:-}"
    export SLURM_CONF=$CONF
    local i
    i=$(index_of "${2:-}")
    [[ -z $(pid_of "slurmd-node$i") ]] || return 0
    start_slurmd "$i"
    scontrol update NodeName="node$i" State=RESUME >/dev/null 2>&1 || true
    wait_for "$START_TIMEOUT" "node$i to be idle" "$LOGS/slurmd-node$i.log" "$LAST_PID" -- node_idle "node$i"
}

cmd_link() {
    set_paths "${1:-}"
    local i state=${3:-}
    i=$(index_of "${2:-}")
    [[ $state == up || $state == down ]] || usage
    ip link set "$PREFIX-h$i" "$state"
}

cmd_exec() {
    set_paths "${1:-}"
    local i
    i=$(index_of "${2:-}")
    shift 2
    [[ $# -gt 0 ]] || usage
    export SLURM_CONF=$CONF
    exec nsenter --net="/run/netns/$(ns_of "$i")" "$@"
}

main() {
    local cmd=${1:-}
    [[ $# -gt 0 ]] && shift
    case $cmd in
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        status) cmd_status "$@" ;;
        node-kill) cmd_node_kill "$@" ;;
        node-start) cmd_node_start "$@" ;;
        link) cmd_link "$@" ;;
        exec) cmd_exec "$@" ;;
        *) usage ;;
    esac
}

main "$@"
