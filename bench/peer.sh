#!/usr/bin/env bash
# jobmill's adapter for ../shared/peers-bench (contract: top of lib/harness.py). Run it with:
#   JOBMILL_PEER_ADAPTER=$PWD/bench/peer.sh BENCH_PEERS="ours bullmq dramatiq celery rq" ../shared/peers-bench/run_all.sh
# Variants: jobmill (library client), jobmill-http (through jobmill-api over HTTP).
# It keeps a private nx-27017 (MongoDB-compatible) on JOBMILL_BENCH_MONGO_PORT (27391) and, for
# the HTTP variant, a bench API on JOBMILL_BENCH_API_PORT (8391), both under bench/.run/. They
# outlive each call (every verb is a process of its own, and W2's enqueue and worker share the
# store) until the harness ends: a watcher started with them follows the process that called
# this script last (the harness, its parent) and runs `bench/peer.sh stop` once that process
# is gone, however it ended. `bench/peer.sh stop` stops exactly them, by pid file (bench/compare.sh
# also runs it when the harness ends). A call that fails or is interrupted before it hands over
# to bench-peer stops what it started.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
# shellcheck source=../scripts/lib.sh
. "$ROOT/scripts/lib.sh"
export BENCH_REDIS_URL="${BENCH_REDIS_URL:-redis://127.0.0.1:6391/0}"
RUN="$HERE/.run"
BIN="$ROOT/target/release/bench-peer"
mkdir -p "$RUN"
# Ports are chosen once (preferring the defaults) and remembered, because another process may
# hold the default.
[ -s "$RUN/mongo.port" ] || preferred_port "${JOBMILL_BENCH_MONGO_PORT:-27391}" >"$RUN/mongo.port"
[ -s "$RUN/api.port" ] || preferred_port "${JOBMILL_BENCH_API_PORT:-8391}" >"$RUN/api.port"
MONGO_PORT="$(cat "$RUN/mongo.port")"
API_PORT="$(cat "$RUN/api.port")"
export JOBMILL_BENCH_MONGODB_URI="mongodb://127.0.0.1:${MONGO_PORT}/?directConnection=true"
export JOBMILL_BENCH_API_PORT="$API_PORT"

# stop_server api|mongo: stop that server if it is still the one this script started (its pid
# file names a live process with the right command line; a pid the system has since given to
# another process is left alone): TERM, then KILL after a grace period (stop_pid_file).
stop_server() {
    local file pattern grace pid
    case "$1" in
      api) file="$RUN/api.pid" pattern="$BIN api" grace=5 ;;
      mongo) file="$RUN/mongo/nx.pid" pattern="$JM_NX_BIN" grace=10 ;;
    esac
    # Interrupted while starting, a server may not have written its pid file yet; it is then
    # still a background job of this shell (not of `bench/peer.sh stop`), which knows its pid.
    if ! pid_file_matches "$file" "$pattern"; then
        for pid in $(jobs -p); do
            if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$pattern"; then
                echo "$pid" >"$file"
            fi
        done
    fi
    if pid_file_matches "$file" "$pattern"; then
        stop_pid_file "$file" "$grace"
    fi
    rm -f "$file"
}

# The servers this call started. A successful call ends in `exec bench-peer`, which runs no
# trap, so they stay up for the harness's next call; a call that exits instead (an error,
# SIGINT, SIGTERM) stops them again, the last started first.
STARTED=()
on_exit() {
    local rc=$? i
    if [ "$rc" -ne 0 ]; then
        for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
            stop_server "${STARTED[i]}"
        done
    fi
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The watcher: while the process named in harness.pid lives, wait; then stop the servers. Every
# call names its own parent there, so one watcher follows the harness that uses the servers
# now, and a new harness taking over servers an earlier one started is not cut off.
watch_harness() {
    echo "$PPID" >"$RUN/harness.pid"
    if pid_file_matches "$RUN/watch.pid" "peer.sh watch"; then
        return 0
    fi
    setsid bash -c 'while kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; do sleep 1; done; exec "$2" stop' \
        "peer.sh watch" "$RUN/harness.pid" "$HERE/peer.sh" </dev/null >/dev/null 2>&1 &
    echo $! >"$RUN/watch.pid"
}

ensure_mongo() {
    # Every caller hands over to bench-peer next, and an `exec` that fails under `set -e` exits
    # without running the EXIT trap: without the binary, start nothing.
    [ -x "$BIN" ] || die "$BIN is missing (bench/peer.sh setup builds it)"
    if ! pid_file_matches "$RUN/mongo/nx.pid" nx-27017; then
        if ! port_is_free "$MONGO_PORT"; then
            MONGO_PORT="$(free_port)"
            echo "$MONGO_PORT" >"$RUN/mongo.port"
            export JOBMILL_BENCH_MONGODB_URI="mongodb://127.0.0.1:${MONGO_PORT}/?directConnection=true"
        fi
        mkdir -p "$RUN/mongo"
        # Listed before the start: start_private_mongo clears a stale nx.pid first, so whatever
        # pid the file holds from here on is this call's server.
        STARTED+=(mongo)
        start_private_mongo "$RUN/mongo" "$MONGO_PORT" >&2
    fi
    watch_harness
}

ensure_api() {
    if ! pid_file_matches "$RUN/api.pid" bench-peer \
        || ! curl -fs "http://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1; then
        stop_server api >&2
        if ! port_is_free "$API_PORT"; then
            API_PORT="$(free_port)"
            echo "$API_PORT" >"$RUN/api.port"
            export JOBMILL_BENCH_API_PORT="$API_PORT"
        fi
        setsid "$BIN" api >"$RUN/api.log" 2>&1 < /dev/null &
        echo $! >"$RUN/api.pid"
        STARTED+=(api)
        for _ in $(seq 1 100); do
            curl -fs "http://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1 && return 0
            sleep 0.1
        done
        echo "bench api did not become ready; see $RUN/api.log" >&2
        exit 1
    fi
}

cmd="${1:-}"; shift || true
case "$cmd" in
  setup)
    ensure_cargo
    ensure_mongo_installed >&2
    ensure_curl_installed >&2
    (cd "$ROOT" && cargo build --release -q -p jobmill-bench --bin bench-peer) >&2 ;;
  versions)
    echo "jobmill=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo dev) (store: nx-27017 $("$ROOT/.venv-mongo/bin/pip" show nx-27017 2>/dev/null | awk '/^Version/{print $2}'))" ;;
  variants) printf 'jobmill\njobmill-http\n' ;;
  info)
    case "${1:-}" in
      jobmill-http) via="HTTP API (jobmill-api on loopback, keep-alive client)" ;;
      *) via="library client (JobClient)" ;;
    esac
    printf '{"workloads": ["w1","w2","w3","w4"], "bulk": true, "cpu": "1 process x concurrency 64 (tokio, 2 threads)", "io": "1 process x concurrency 100", "notes": "enqueue via %s; every job inserted into MongoDB (nx-27017) before it is queued, every state and result recorded there"}\n' "$via" ;;
  enqueue)
    ensure_mongo
    [ "${1:-}" = jobmill-http ] && ensure_api
    exec "$BIN" "$cmd" "$@" ;;
  steady)
    ensure_mongo
    [ "${1:-}" = jobmill-http ] && ensure_api
    # The submit call's own latency (where W3's time goes) is kept in steady.log.
    exec "$BIN" "$cmd" "$@" 2>>"$RUN/steady.log" ;;
  qlen) exec "$BIN" qlen ;;
  worker)
    ensure_mongo
    exec "$BIN" worker "$2" ;;
  stop)
    stop_server api
    stop_server mongo
    # The watcher runs this verb itself when the harness is gone; otherwise it is stopped too.
    if [ "$(cat "$RUN/watch.pid" 2>/dev/null)" != "$$" ] && pid_file_matches "$RUN/watch.pid" "peer.sh watch"; then
        stop_pid_file "$RUN/watch.pid" 2
    fi
    rm -f "$RUN/watch.pid" "$RUN/harness.pid" ;;
  *) echo "usage: $0 setup|versions|variants|info|enqueue|steady|qlen|worker|stop ..." >&2; exit 2 ;;
esac
