#!/usr/bin/env bash
# jobmill's own benchmark (W1 over HTTP, W2 durability, W5, the store's ceilings), on private
# servers it starts and stops itself:  bench/run.sh [store] [w2] [w3] [w1http] [w5] [ui] [soak]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
# shellcheck source=../scripts/lib.sh
. "$ROOT/scripts/lib.sh"
ensure_cargo
ensure_redis_installed
ensure_mongo_installed
command -v wrk >/dev/null || jm_apt_install wrk
(cd "$ROOT" && cargo build --release -q -p jobmill-bench --bins)
RUN="$HERE/.run/own-$$"
mkdir -p "$RUN"
cleanup() { stop_pid_file "$RUN/redis/redis.pid"; stop_pid_file "$RUN/mongo/nx.pid" 10; rm -rf "$RUN"; }
trap cleanup EXIT
rp="$(free_port)"; mp="$(free_port)"
start_private_redis "$RUN/redis" "$rp" >&2
start_private_mongo "$RUN/mongo" "$mp" >&2
export BENCH_REDIS_URL="redis://127.0.0.1:$rp/0"
export JOBMILL_BENCH_MONGODB_URI="mongodb://127.0.0.1:$mp/?directConnection=true"
echo "# $(date -u +%FT%TZ) $(uname -srm) cores=$(nproc) load=$(cut -d' ' -f1-3 /proc/loadavg)"
"$ROOT/target/release/jobmill-bench" "$@"
