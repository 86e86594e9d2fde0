#!/usr/bin/env bash
# A private, throwaway Redis Cluster on 127.0.0.1 for local runs and tests.
#
#   scripts/redis-cluster.sh start [--replicas 0|1] [--no-full-coverage]
#   scripts/redis-cluster.sh status
#   scripts/redis-cluster.sh stop
#
# `start` runs 3 masters (each with one replica unless --replicas 0) from the
# Debian redis-server, joins them with `redis-cli --cluster create`, waits until
# every node says cluster_state:ok with all 16384 slots covered (and every
# replica is in sync), then prints the seed URLs on stdout as one line
#   redis://127.0.0.1:P1,redis://127.0.0.1:P2,...
# and writes the same line to $DIR/seeds. No persistence (--save "",
# --appendonly no); each node has its own dir, pid file, log and nodes.conf
# under $DIR/nodeN/. `stop` stops exactly the processes named in those pid files.
#
# Knobs:
#   JOBMILL_CLUSTER_DIR           state dir (default .run/cluster under the repo root)
#   JOBMILL_CLUSTER_PORT          first port; nodes use PORT..PORT+N-1 (must be free,
#                                 and so must the cluster-bus ports PORT+10000...).
#                                 Default: 7001.. if free, otherwise free ports.
#   JOBMILL_CLUSTER_REPLICAS      0 or 1 (default 1; --replicas wins)
#   JOBMILL_CLUSTER_FULL_COVERAGE yes|no (default yes; --no-full-coverage sets no)
#   JOBMILL_CLUSTER_NODE_TIMEOUT  cluster-node-timeout in ms (default 2000)
#   JOBMILL_CLUSTER_WAIT          seconds to wait for the cluster to be ready (default 30)
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MASTERS=3
DEFAULT_BASE_PORT=7001

usage() {
    cat >&2 <<'EOF'
usage: scripts/redis-cluster.sh start [--replicas 0|1] [--no-full-coverage]
       scripts/redis-cluster.sh stop
       scripts/redis-cluster.sh status
EOF
    exit 2
}

CMD="${1:-}"
[[ -n "$CMD" ]] || usage
shift

REPLICAS="${JOBMILL_CLUSTER_REPLICAS:-1}"
FULL_COVERAGE="${JOBMILL_CLUSTER_FULL_COVERAGE:-yes}"
NODE_TIMEOUT="${JOBMILL_CLUSTER_NODE_TIMEOUT:-2000}"
WAIT_SECS="${JOBMILL_CLUSTER_WAIT:-30}"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --replicas)
            [[ $# -ge 2 ]] || usage
            REPLICAS="$2"
            shift 2
            ;;
        --replicas=*)
            REPLICAS="${1#*=}"
            shift
            ;;
        --no-full-coverage)
            FULL_COVERAGE=no
            shift
            ;;
        -h | --help) usage ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

[[ "$REPLICAS" == 0 || "$REPLICAS" == 1 ]] || die "--replicas must be 0 or 1, got '$REPLICAS'"
[[ "$FULL_COVERAGE" == yes || "$FULL_COVERAGE" == no ]] \
    || die "JOBMILL_CLUSTER_FULL_COVERAGE must be yes or no, got '$FULL_COVERAGE'"
[[ "$NODE_TIMEOUT" =~ ^[0-9]+$ ]] || die "JOBMILL_CLUSTER_NODE_TIMEOUT must be milliseconds"
[[ "$WAIT_SECS" =~ ^[0-9]+$ ]] || die "JOBMILL_CLUSTER_WAIT must be seconds"
NODES=$((MASTERS * (REPLICAS + 1)))

DIR="${JOBMILL_CLUSTER_DIR:-$ROOT/.run/cluster}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd -P)"
PORTS_FILE="$DIR/ports"   # one port per line, line N = $DIR/nodeN
CONF_FILE="$DIR/config"   # options the running cluster was started with
SEEDS_FILE="$DIR/seeds"

# ---- bookkeeping ------------------------------------------------------------

# Ports of the cluster recorded in $DIR (empty if none).
recorded_ports() {
    [[ -f "$PORTS_FILE" ]] || return 0
    grep -E '^[0-9]+$' "$PORTS_FILE" || true
}

node_dir() { echo "$DIR/node$1"; }

# True if node I (1-based) on PORT is alive and is the redis-server we started:
# the PID in its pid file is alive and its command line names redis-server and
# the port (argv "--port P" at first, later the proctitle "127.0.0.1:P").
node_alive() {
    local i="$1" port="$2" pidfile pid
    pidfile="$(node_dir "$i")/redis.pid"
    pid_file_matches "$pidfile" "redis-server" || return 1
    pid="$(_jm_pid_from_file "$pidfile")" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qE -- "(:| )$port( |$)"
}

# Echo how many recorded nodes are alive.
count_alive() {
    local i=0 n=0 port
    while read -r port; do
        i=$((i + 1))
        if node_alive "$i" "$port"; then n=$((n + 1)); fi
    done < <(recorded_ports)
    echo "$n"
}

# Stop every recorded node that is still ours; quiet no-op when nothing runs.
stop_nodes() {
    local i=0 port files=()
    while read -r port; do
        i=$((i + 1))
        if node_alive "$i" "$port"; then
            files+=("$(node_dir "$i")/redis.pid")
        fi
    done < <(recorded_ports)
    if [[ ${#files[@]} -gt 0 ]]; then
        log "stopping ${#files[@]} cluster node(s) in $DIR"
        stop_pid_files 10 "${files[@]}"
    fi
    rm -f "$DIR"/node[0-9]*/redis.pid "$SEEDS_FILE" "$CONF_FILE"
}

cli() {
    local port="$1"
    shift
    redis-cli -h 127.0.0.1 -p "$port" "$@"
}

# `cluster info` field FIELD of the node on PORT (empty on error).
info_field() {
    cli "$1" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"
}

seeds_line() {
    local port out=""
    while read -r port; do
        out+="${out:+,}redis://127.0.0.1:$port"
    done < <(recorded_ports)
    echo "$out"
}

# ---- port selection -----------------------------------------------------------

# A node needs PORT and its cluster-bus port PORT+10000 free.
pair_is_free() {
    (($1 >= 1024 && $1 + 10000 <= 65535)) && port_is_free "$1" && port_is_free $(($1 + 10000))
}

# Echo NODES ports, one per line.
pick_ports() {
    local base p i picked=()
    if [[ -n "${JOBMILL_CLUSTER_PORT:-}" ]]; then
        base="$JOBMILL_CLUSTER_PORT"
        [[ "$base" =~ ^[0-9]+$ ]] || die "JOBMILL_CLUSTER_PORT must be a port number"
        for ((i = 0; i < NODES; i++)); do
            p=$((base + i))
            pair_is_free "$p" \
                || die "port $p or its cluster-bus port $((p + 10000)) is in use (JOBMILL_CLUSTER_PORT=$base)"
            picked+=("$p")
        done
    else
        local all_free=1
        for ((i = 0; i < NODES; i++)); do
            pair_is_free $((DEFAULT_BASE_PORT + i)) || { all_free=""; break; }
        done
        if [[ -n "$all_free" ]]; then
            for ((i = 0; i < NODES; i++)); do picked+=($((DEFAULT_BASE_PORT + i))); done
        else
            local tries=0
            while [[ ${#picked[@]} -lt $NODES ]]; do
                tries=$((tries + 1))
                ((tries < 200)) || die "could not find $NODES free port pairs (P and P+10000)"
                p="$(free_port)"
                [[ " ${picked[*]} " != *" $p "* ]] || continue
                pair_is_free "$p" || continue
                picked+=("$p")
            done
        fi
    fi
    printf '%s\n' "${picked[@]}"
}

# ---- commands -----------------------------------------------------------------

start_failed() {
    local i=0 port
    while read -r port; do
        i=$((i + 1))
        _jm_tail_log "$(node_dir "$i")/redis.log" 15
    done < <(recorded_ports)
    stop_nodes
    die "$*"
}

# True when every node reports a healthy, fully covered cluster and every
# replica has finished its initial sync.
cluster_ready() {
    local port state assigned slots_ok known repl nodes
    while read -r port; do
        state="$(info_field "$port" cluster_state)"
        assigned="$(info_field "$port" cluster_slots_assigned)"
        slots_ok="$(info_field "$port" cluster_slots_ok)"
        known="$(info_field "$port" cluster_known_nodes)"
        [[ "$state" == ok && "$assigned" == 16384 && "$slots_ok" == 16384 && "$known" == "$NODES" ]] \
            || return 1
        repl="$(cli "$port" info replication 2>/dev/null | tr -d '\r')"
        if grep -qx 'role:slave' <<<"$repl"; then
            grep -qx 'master_link_status:up' <<<"$repl" || return 1
            grep -qx 'master_sync_in_progress:0' <<<"$repl" || return 1
        fi
    done < <(recorded_ports)
    # Every node agrees on MASTERS masters with REPLICAS replica(s) each.
    while read -r port; do
        nodes="$(cli "$port" cluster nodes 2>/dev/null | tr -d '\r')"
        [[ "$(awk '$3 ~ /(^|,)master(,|$)/' <<<"$nodes" | wc -l)" -eq "$MASTERS" ]] || return 1
        [[ "$(awk '$3 ~ /(^|,)slave(,|$)/' <<<"$nodes" | wc -l)" -eq $((MASTERS * REPLICAS)) ]] || return 1
    done < <(recorded_ports)
}

cmd_start() {
    local want="replicas=$REPLICAS full_coverage=$FULL_COVERAGE node_timeout=$NODE_TIMEOUT"
    local alive total
    alive="$(count_alive)"
    total="$(recorded_ports | wc -l)"
    if ((alive > 0)); then
        if ((alive == total)) && [[ -f "$CONF_FILE" && -f "$SEEDS_FILE" ]]; then
            if [[ "$(cat "$CONF_FILE")" != "$want" ]]; then
                die "a cluster is already running in $DIR with $(cat "$CONF_FILE"); stop it first (wanted: $want)"
            fi
            log "cluster already running in $DIR ($alive nodes)"
            cat "$SEEDS_FILE"
            return 0
        fi
        log "found a partial cluster in $DIR ($alive of $total nodes alive); restarting it"
        stop_nodes
    fi

    ensure_redis_installed
    command -v redis-cli >/dev/null 2>&1 || die "redis-cli not found"

    # Fresh state: old nodes.conf files would make `--cluster create` refuse.
    rm -rf -- "$DIR"/node[0-9]*
    rm -f "$PORTS_FILE" "$SEEDS_FILE" "$CONF_FILE"
    pick_ports >"$PORTS_FILE.tmp"
    mv "$PORTS_FILE.tmp" "$PORTS_FILE"

    local i=0 port d pid addrs=()
    while read -r port; do
        i=$((i + 1))
        d="$(node_dir "$i")"
        mkdir -p "$d"
        # enable-debug-command local: tests may use DEBUG SLEEP / DEBUG SEGFAULT
        # to simulate a hung or crashed node (loopback only, so no exposure).
        "${JM_SETSID[@]}" redis-server --port "$port" --bind 127.0.0.1 \
            --cluster-enabled yes --cluster-config-file "$d/nodes.conf" \
            --cluster-node-timeout "$NODE_TIMEOUT" \
            --cluster-require-full-coverage "$FULL_COVERAGE" \
            --save "" --appendonly no --repl-diskless-sync-delay 0 \
            --enable-debug-command local \
            --dir "$d" --daemonize no --logfile "$d/redis.log" \
            </dev/null >/dev/null 2>&1 &
        pid=$!
        echo "$pid" >"$d/redis.pid"
        addrs+=("127.0.0.1:$port")
    done < <(recorded_ports)

    local deadline=$((SECONDS + 10))
    while read -r port; do
        until [[ "$(cli "$port" ping 2>/dev/null || true)" == PONG ]]; do
            ((SECONDS < deadline)) || start_failed "node 127.0.0.1:$port did not answer PING within 10s"
            sleep 0.1
        done
    done < <(recorded_ports)
    log "started $NODES redis-server nodes on ${addrs[*]}"

    local out
    if ! out="$(redis-cli --cluster create "${addrs[@]}" --cluster-replicas "$REPLICAS" \
        --cluster-yes </dev/null 2>&1)"; then
        printf '%s\n' "$out" >&2
        start_failed "redis-cli --cluster create failed"
    fi
    printf '%s\n' "$out" >"$DIR/create.log"

    deadline=$((SECONDS + WAIT_SECS))
    until cluster_ready; do
        ((SECONDS < deadline)) || start_failed "cluster not ready within ${WAIT_SECS}s (see $DIR/create.log)"
        sleep 0.2
    done

    echo "$want" >"$CONF_FILE"
    seeds_line >"$SEEDS_FILE"
    log "cluster ready: $MASTERS masters, $REPLICAS replica(s) each, full coverage $FULL_COVERAGE, node timeout ${NODE_TIMEOUT}ms"
    cat "$SEEDS_FILE"
}

cmd_stop() {
    local total
    total="$(recorded_ports | wc -l)"
    if ((total == 0)) || (($(count_alive) == 0)); then
        rm -f "$DIR"/node[0-9]*/redis.pid "$SEEDS_FILE" "$CONF_FILE"
        log "no cluster running in $DIR"
        return 0
    fi
    stop_nodes
    log "stopped"
}

cmd_status() {
    local total alive
    total="$(recorded_ports | wc -l)"
    if ((total == 0)); then
        echo "no cluster in $DIR"
        return 3
    fi
    alive="$(count_alive)"
    if ((alive == 0)); then
        echo "cluster in $DIR is not running"
        return 3
    fi

    local i=0 port pid line role flags master_id master_port slots id
    local -A port_of_id=()
    # Map node ids to ports from any live node's view.
    while read -r port; do
        while read -r id addr _; do
            [[ -n "$id" ]] || continue
            addr="${addr%@*}"
            port_of_id[$id]="${addr##*:}"
        done < <(cli "$port" cluster nodes 2>/dev/null | tr -d '\r')
    done < <(recorded_ports)

    printf '%-6s %-8s %-8s %-12s %s\n' PORT PID ROLE REPLICA_OF SLOTS
    while read -r port; do
        i=$((i + 1))
        pid="$(_jm_pid_from_file "$(node_dir "$i")/redis.pid" 2>/dev/null || echo -)"
        if ! node_alive "$i" "$port"; then
            printf '%-6s %-8s %-8s %-12s %s\n' "$port" "$pid" down - -
            continue
        fi
        line="$(cli "$port" cluster nodes 2>/dev/null | tr -d '\r' | grep ' myself' || true)"
        # <id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slot>...
        read -r _ _ flags master_id _ _ _ _ slots <<<"$line" || true
        case ",$flags," in
            *,master,*) role=master ;;
            *,slave,*) role=replica ;;
            *) role="${flags:-?}" ;;
        esac
        master_port=-
        if [[ -n "${master_id:-}" && "$master_id" != - ]]; then
            master_port="${port_of_id[$master_id]:-$master_id}"
        fi
        printf '%-6s %-8s %-8s %-12s %s\n' "$port" "$pid" "$role" "$master_port" "${slots:--}"
    done < <(recorded_ports)

    local first
    first="$(recorded_ports | while read -r p; do
        [[ "$(cli "$p" ping 2>/dev/null || true)" == PONG ]] && { echo "$p"; break; }
    done)"
    if [[ -n "$first" ]]; then
        echo "cluster_state:$(info_field "$first" cluster_state)" \
            "slots_ok:$(info_field "$first" cluster_slots_ok)/16384" \
            "known_nodes:$(info_field "$first" cluster_known_nodes)" \
            "($alive/$total nodes alive; $(cat "$CONF_FILE" 2>/dev/null || echo 'config unknown'))"
    fi
    [[ -f "$SEEDS_FILE" ]] && echo "seeds: $(cat "$SEEDS_FILE")"
    ((alive == total)) || return 1
    return 0
}

case "$CMD" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    -h | --help | help) usage ;;
    *) usage ;;
esac
