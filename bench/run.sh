#!/usr/bin/env bash
# jobmill's own benchmark (W1 over HTTP, W2 durability, W5, the store's ceilings), on private
# servers it starts and stops itself:  bench/run.sh [store] [w2] [w2cluster] [w3] [w1http] [w5] [sched] [ui] [soak]
#   [w2apalis] [w2metrics] [queues] [sse] [w1] [w6] [w7] [w8] (see bench/src/bin/jobmill-bench/main.rs)
# `w2cluster` also starts a private 3-master Redis Cluster (no replicas) for its run.
# BENCH_PROFILE=debug builds and runs the debug binary (where no release build fits the time).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
# shellcheck source=../scripts/lib.sh
. "$ROOT/scripts/lib.sh"
ensure_cargo
ensure_redis_installed
ensure_mongo_installed
# wrk only for w5 (named, or in the default list)
if [[ $# -eq 0 || " $* " == *" w5 "* ]]; then
    command -v wrk >/dev/null || jm_apt_install wrk
fi
PROFILE="${BENCH_PROFILE:-release}"
if [[ "$PROFILE" == debug ]]; then
    (cd "$ROOT" && cargo build -q -p jobmill-bench --bins)
else
    (cd "$ROOT" && cargo build --release -q -p jobmill-bench --bins)
fi
RUN="$HERE/.run/own-$$"
mkdir -p "$RUN"
cleanup() {
    if [[ -d "$RUN/cluster" ]]; then
        JOBMILL_CLUSTER_DIR="$RUN/cluster" "$ROOT/scripts/redis-cluster.sh" stop >&2 || true
    fi
    stop_pid_file "$RUN/redis/redis.pid"; stop_pid_file "$RUN/mongo/nx.pid" 10; rm -rf "$RUN"
}
trap cleanup EXIT
rp="$(free_port)"; mp="$(free_port)"
start_private_redis "$RUN/redis" "$rp" >&2
start_private_mongo "$RUN/mongo" "$mp" >&2
export BENCH_REDIS_URL="redis://127.0.0.1:$rp/0"
export JOBMILL_BENCH_MONGODB_URI="mongodb://127.0.0.1:$mp/?directConnection=true"
for w in "$@"; do
    if [[ "$w" == w2cluster ]]; then
        BENCH_CLUSTER_SEEDS="$(JOBMILL_CLUSTER_DIR="$RUN/cluster" \
            "$ROOT/scripts/redis-cluster.sh" start --replicas 0)"
        export BENCH_CLUSTER_SEEDS
    fi
done
echo "# $(date -u +%FT%TZ) $(uname -srm) cores=$(nproc) load=$(cut -d' ' -f1-3 /proc/loadavg)"
"$ROOT/target/$PROFILE/jobmill-bench" "$@"
