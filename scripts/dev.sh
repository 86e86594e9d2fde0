#!/usr/bin/env bash
# Set up and run the whole jobmill system in the foreground:
# private redis + nx-27017 (unless JOBMILL_REDIS_URL / JOBMILL_MONGODB_URI are
# set), the API and two workers. Ctrl-C stops everything it started.
#
# Knobs: JOBMILL_API_ADDR (default 127.0.0.1:8080), JOBMILL_API_KEYS,
# JOBMILL_WORKER_ARGS (default "--queues default,webhooks --concurrency 16"),
# JOBMILL_DEV_WORKERS (default 2), JOBMILL_DEV_STOP_TIMEOUT (default 60 s),
# JOBMILL_DEV_METRICS_PORT (first worker's metrics port, default 9464),
# JOBMILL_WEBHOOK_ALLOW and JOBMILL_WEBHOOK_DESTINATIONS (default: loopback only).
# JOBMILL_DEV_REDIS=cluster runs on a private Redis Cluster (scripts/redis-cluster.sh,
# 3 masters + 3 replicas under .run/dev/cluster) through JOBMILL_REDIS_CLUSTER.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

RUN="$ROOT/.run/dev"
mkdir -p "$RUN"

WORKERS="${JOBMILL_DEV_WORKERS:-2}"
STOP_TIMEOUT="${JOBMILL_DEV_STOP_TIMEOUT:-60}"
READY_TIMEOUT="${JOBMILL_DEV_READY_TIMEOUT:-60}"

# ---- state used by the cleanup trap (only things this script started) ----
STARTED_REDIS=""
STARTED_CLUSTER=""
STARTED_MONGO=""
PROC_NAMES=()
PROC_PIDFILES=()
CLEANED=""

cleanup() {
    [[ -z "$CLEANED" ]] || return 0
    CLEANED=1
    trap 'log "already stopping (workers drain for up to ${STOP_TIMEOUT}s)..."' INT TERM
    local i worker_files=() api_files=()
    for i in "${!PROC_NAMES[@]}"; do
        case "${PROC_NAMES[$i]}" in
            api) api_files+=("${PROC_PIDFILES[$i]}") ;;
            *) worker_files+=("${PROC_PIDFILES[$i]}") ;;
        esac
    done
    if [[ ${#worker_files[@]} -gt 0 ]]; then
        log "stopping workers (SIGTERM, draining up to ${STOP_TIMEOUT}s)"
        stop_pid_files "$STOP_TIMEOUT" "${worker_files[@]}"
    fi
    if [[ ${#api_files[@]} -gt 0 ]]; then
        log "stopping api"
        stop_pid_files 15 "${api_files[@]}"
    fi
    rm -f -- "${worker_files[@]}" "${api_files[@]}"
    if [[ -n "$STARTED_CLUSTER" ]]; then
        JOBMILL_CLUSTER_DIR="$RUN/cluster" "$ROOT/scripts/redis-cluster.sh" stop || true
    fi
    if [[ -n "$STARTED_REDIS" ]]; then
        log "stopping private redis"
        stop_pid_file "$RUN/redis/redis.pid"
        rm -f "$RUN/redis/redis.pid"
    fi
    if [[ -n "$STARTED_MONGO" ]]; then
        log "stopping private nx-27017"
        stop_pid_file "$RUN/mongo/nx.pid" 10
        rm -f "$RUN/mongo/nx.pid"
    fi
    log "stopped"
}

on_signal() {
    echo >&2
    log "received $1, shutting down"
    cleanup
    exit 0
}

trap 'rc=$?; cleanup; exit $rc' EXIT
trap 'on_signal SIGINT' INT
trap 'on_signal SIGTERM' TERM

# ---- leftovers of a previous run that was killed hard (our own PID files) ----
leftover_workers=()
for f in "$RUN"/worker-*.pid; do
    [[ -e "$f" ]] || continue
    if pid_file_matches "$f" "jobmill-worker"; then leftover_workers+=("$f"); else rm -f "$f"; fi
done
if [[ ${#leftover_workers[@]} -gt 0 ]]; then
    log "stopping ${#leftover_workers[@]} leftover worker(s) from a previous run"
    stop_pid_files "$STOP_TIMEOUT" "${leftover_workers[@]}"
    rm -f -- "${leftover_workers[@]}"
fi
for spec in "api.pid:jobmill-api" "redis/redis.pid:redis-server" "mongo/nx.pid:nx-27017"; do
    f="$RUN/${spec%%:*}"
    [[ -e "$f" ]] || continue
    if pid_file_matches "$f" "${spec#*:}"; then
        log "stopping leftover ${spec#*:} from a previous run ($f)"
        stop_pid_file "$f" 15
    fi
    rm -f "$f"
done

# ---- prerequisites ----
ensure_curl_installed
ensure_cargo
[[ -n "${JOBMILL_REDIS_URL:-}${JOBMILL_REDIS_CLUSTER:-}" ]] || ensure_redis_installed
[[ -n "${JOBMILL_MONGODB_URI:-}" ]] || ensure_mongo_installed

export JOBMILL_API_ADDR="${JOBMILL_API_ADDR:-127.0.0.1:8080}"
api_port="${JOBMILL_API_ADDR##*:}"
api_host="${JOBMILL_API_ADDR%:*}"
case "$api_host" in
    0.0.0.0 | "" | "[::]") api_host=127.0.0.1 ;;
esac
API_URL="http://${api_host}:${api_port}"
if ! port_is_free "$api_port"; then
    die "port $api_port is already in use; set JOBMILL_API_ADDR=127.0.0.1:<port>"
fi

# ---- build (before starting servers, so a compile error leaves nothing running) ----
log "cargo build --release"
cargo build --release
for b in jobmill-api jobmill-worker; do
    [[ -x "target/release/$b" ]] || die "target/release/$b was not built"
done

# ---- redis / mongo ----
if [[ "${JOBMILL_DEV_REDIS:-}" == cluster && -z "${JOBMILL_REDIS_CLUSTER:-}" ]]; then
    [[ -z "${JOBMILL_REDIS_URL:-}" ]] || die "JOBMILL_DEV_REDIS=cluster and JOBMILL_REDIS_URL are both set; unset one"
    STARTED_CLUSTER=1
    JOBMILL_REDIS_CLUSTER="$(JOBMILL_CLUSTER_DIR="$RUN/cluster" "$ROOT/scripts/redis-cluster.sh" start)"
    export JOBMILL_REDIS_CLUSTER
elif [[ -z "${JOBMILL_REDIS_URL:-}${JOBMILL_REDIS_CLUSTER:-}" ]]; then
    port="$(preferred_port 6380)"
    STARTED_REDIS=1
    start_private_redis "$RUN/redis" "$port"
    export JOBMILL_REDIS_URL="redis://127.0.0.1:${port}/"
fi
if [[ -z "${JOBMILL_MONGODB_URI:-}" ]]; then
    port="$(preferred_port 27018)"
    STARTED_MONGO=1
    start_private_mongo "$RUN/mongo" "$port"
    export JOBMILL_MONGODB_URI="mongodb://127.0.0.1:${port}/?directConnection=true"
fi

# ---- API key ----
DEV_KEY=""
if [[ -z "${JOBMILL_API_KEYS:-}" ]]; then
    if [[ ! -s "$RUN/api-key" ]]; then
        (umask 077 && printf 'dev-%s\n' "$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')" >"$RUN/api-key")
    fi
    DEV_KEY="$(tr -d ' \n' <"$RUN/api-key")"
    export JOBMILL_API_KEYS="dev:${DEV_KEY}:operator"
fi

# ---- webhooks: loopback only ----
# Callbacks may reach a receiver on this machine and nothing else, so a URL
# pasted into a dev setup cannot send anything out. A variable set (even to
# empty) by the caller is kept.
DEV_LOOPBACK="127.0.0.1,localhost,[::1]"
export JOBMILL_WEBHOOK_ALLOW="${JOBMILL_WEBHOOK_ALLOW-$DEV_LOOPBACK}"
export JOBMILL_WEBHOOK_DESTINATIONS="${JOBMILL_WEBHOOK_DESTINATIONS-$DEV_LOOPBACK}"

# ---- start api + workers ----
# start_proc NAME CMD... : PID of the binary itself goes to $RUN/NAME.pid;
# output is prefixed with [NAME]. The sed ignores INT/TERM so that it keeps
# forwarding output while the binaries drain.
start_proc() {
    local name="$1"
    shift
    "${JM_SETSID[@]}" "$@" </dev/null \
        > >(trap '' INT TERM; exec sed -u "s/^/[${name}] /") 2>&1 &
    echo "$!" >"$RUN/$name.pid"
    PROC_NAMES+=("$name")
    PROC_PIDFILES+=("$RUN/$name.pid")
}

if [[ -n "${JOBMILL_WORKER_ARGS:-}" ]]; then
    read -r -a worker_args <<<"$JOBMILL_WORKER_ARGS"
else
    worker_args=(--queues default,webhooks --concurrency 16)
fi

log "starting api on $JOBMILL_API_ADDR"
start_proc api target/release/jobmill-api
# Each worker serves Prometheus metrics on its own loopback port (no auth: loopback only).
METRICS_BASE_PORT="${JOBMILL_DEV_METRICS_PORT:-9464}"
metrics_addrs=()
for ((n = 1; n <= WORKERS; n++)); do
    maddr="127.0.0.1:$((METRICS_BASE_PORT + n - 1))"
    metrics_addrs+=("http://$maddr/metrics")
    log "starting worker-$n: jobmill-worker ${worker_args[*]} --metrics-addr $maddr"
    start_proc "worker-$n" target/release/jobmill-worker "${worker_args[@]}" --metrics-addr "$maddr"
done

# Exit non-zero (stopping everything) as soon as one of our processes is gone.
check_procs() {
    local i pid rc
    for i in "${!PROC_NAMES[@]}"; do
        pid="$(cat "${PROC_PIDFILES[$i]}")"
        if ! kill -0 "$pid" 2>/dev/null; then
            rc=0
            wait "$pid" 2>/dev/null || rc=$?
            log "${PROC_NAMES[$i]} (pid $pid) exited unexpectedly with status $rc; stopping everything"
            exit 1
        fi
    done
}

# ---- wait for readiness ----
deadline=$((SECONDS + READY_TIMEOUT))
until curl -fsS -o /dev/null --max-time 2 "$API_URL/readyz" 2>/dev/null; do
    check_procs
    if ((SECONDS >= deadline)); then
        log "API did not report ready at $API_URL/readyz within ${READY_TIMEOUT}s"
        exit 1
    fi
    sleep 0.5
done

show_key="${DEV_KEY:-<one of the secrets in JOBMILL_API_KEYS>}"
cat <<EOF

============================================================================
 jobmill is running
   API:       $API_URL        (workers: $WORKERS)
   Dashboard: $API_URL/ui/    (sign in with the API key below)
   API key:   $show_key
   redis:    ${JOBMILL_REDIS_CLUSTER:-$JOBMILL_REDIS_URL}
   mongodb:  $JOBMILL_MONGODB_URI
   webhooks: to ${JOBMILL_WEBHOOK_DESTINATIONS:-any public address}

 Submit a job:
   curl -s -X POST $API_URL/v1/jobs -H "Authorization: Bearer $show_key" -H 'content-type: application/json' -d '{"kind":"sleep","args":{"ms":2000}}'

 Poll it (use the "id" from the answer above):
   curl -s $API_URL/v1/jobs/<JOB_ID> -H "Authorization: Bearer $show_key"

 The jobmill CLI (cargo build --release -p jobmill-cli):
   export JOBMILL_URL=$API_URL JOBMILL_KEY=$show_key
   target/release/jobmill workers; target/release/jobmill queues

 Operators: workers, queues, live events, metrics:
   curl -s $API_URL/v1/workers -H "Authorization: Bearer $show_key"
   curl -s $API_URL/v1/queues -H "Authorization: Bearer $show_key"
   curl -sN $API_URL/v1/events -H "Authorization: Bearer $show_key"
   fleet metrics:  curl -s $API_URL/metrics -H "Authorization: Bearer $show_key"
   worker metrics: ${metrics_addrs[*]}

 Press Ctrl-C to stop (workers drain first).
============================================================================

EOF

# ---- supervise ----
while :; do
    check_procs
    sleep 1 &
    wait $! || true
done
