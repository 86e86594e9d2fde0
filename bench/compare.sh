#!/usr/bin/env bash
# Run ../shared/peers-bench with jobmill next to the peers, in one run, on one Redis.
#   bench/compare.sh                              # ours bullmq dramatiq celery rq, 3 reps (~1 h)
#   BENCH_QUICK=1 bench/compare.sh                # smoke: N=2000, 1 rep
#   BENCH_PEERS="ours bullmq" BENCH_WORKLOADS=w2,w3 bench/compare.sh
# The harness's own `ours/peer.sh` forwarder does not parse (an apostrophe inside
# ${JOBMILL_PEER_ADAPTER:?...}), so this runs the harness from an overlay folder: symlinks to
# every entry of ../shared/peers-bench, plus a working `ours/peer.sh` that forwards to
# bench/peer.sh. Results land in bench/.run/peers-bench/results/. When the harness ends, the
# adapter's servers are stopped (`bench/peer.sh stop`).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
SRC="$(cd "$ROOT/../shared/peers-bench" && pwd)"
OVER="$HERE/.run/peers-bench"
mkdir -p "$OVER/ours" "$OVER/results" "$OVER/logs"
for entry in "$SRC"/*; do
    name="$(basename "$entry")"
    case "$name" in ours|results|logs) continue ;; esac
    ln -sfn "$entry" "$OVER/$name"
done
cat >"$OVER/ours/peer.sh" <<FWD
#!/usr/bin/env bash
exec "$HERE/peer.sh" "\$@"
FWD
chmod +x "$OVER/ours/peer.sh"
export BENCH_PEERS="${BENCH_PEERS:-ours bullmq dramatiq celery rq}"
# The adapter's servers (nx-27017, the bench API) outlive each adapter call, as the harness
# needs; they go when the harness ends: normally, on an error, or interrupted. Not `exec`, so
# that this shell is still here to stop them.
trap '"$HERE/peer.sh" stop' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
"$OVER/run_all.sh"
