#!/usr/bin/env bash
# W6 memory with the worker as a process of its own: the README's stack (scripts/dev.sh, one
# worker, private Redis and nx-27017) takes a file (BENCH_W6_MIB, default 1024 MiB) in 8 MiB
# parts, one request at a time, then assembles it; the worker's resident set size is sampled
# from /proc every 20 ms. The baseline is the same worker's RSS just before the assembly.
#   bench/w6rss.sh            # prints one JSON line; the stack is stopped afterwards
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
# shellcheck source=../scripts/lib.sh
. "$ROOT/scripts/lib.sh"
MIB="${BENCH_W6_MIB:-1024}"
WORK="$HERE/.run/w6rss-$$"
mkdir -p "$WORK"
port="$(free_port)"
URL="http://127.0.0.1:$port"
DEV_PID=""
cleanup() {
    if [[ -n "$DEV_PID" ]] && kill -0 "$DEV_PID" 2>/dev/null; then
        kill -TERM "$DEV_PID" 2>/dev/null || true
        wait "$DEV_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

JOBMILL_API_ADDR="127.0.0.1:$port" JOBMILL_DEV_WORKERS=1 \
    "$ROOT/scripts/dev.sh" >"$WORK/dev.log" 2>&1 &
DEV_PID=$!
for _ in $(seq 1 1800); do
    curl -fsS -o /dev/null --max-time 2 "$URL/readyz" 2>/dev/null && break
    kill -0 "$DEV_PID" 2>/dev/null || { cat "$WORK/dev.log" >&2; die "scripts/dev.sh stopped"; }
    sleep 1
done
KEY="$(tr -d ' \n' <"$ROOT/.run/dev/api-key")"
WPID="$(cat "$ROOT/.run/dev/worker-1.pid")"
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

log "w6rss: writing $MIB MiB"
head -c "$((MIB << 20))" /dev/urandom >"$WORK/src.bin"
SHA="$(sha256sum "$WORK/src.bin" | cut -d' ' -f1)"
UP="$(curl -fsS -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "$URL/v1/uploads" \
    -d "{\"filename\":\"w6.bin\",\"sha256\":\"$SHA\"}" | python3 -c 'import sys,json;print(json.load(sys.stdin)["id"])')"
split -b 8388608 -d -a 4 "$WORK/src.bin" "$WORK/part."
rm -f "$WORK/src.bin"
log "w6rss: uploading $(ls "$WORK"/part.* | wc -l) parts"
t0=$(date +%s.%N)
for f in "$WORK"/part.*; do
    n=$((10#${f##*.}))
    curl -fsS -o /dev/null -X PUT -H "Authorization: Bearer $KEY" --data-binary "@$f" \
        "$URL/v1/uploads/$UP/parts/$n"
    rm -f "$f"
done
t1=$(date +%s.%N)
sleep 2
idle="$(rss_kib "$WPID")"
JOB="$(curl -fsS -H "Authorization: Bearer $KEY" -X POST "$URL/v1/uploads/$UP/complete" \
    | python3 -c 'import sys,json;print(json.load(sys.stdin)["id"])')"
log "w6rss: assembling (job $JOB); sampling worker pid $WPID"
peak="$idle"
state=""
polls=0
t2=$(date +%s.%N)
# Bounded: at most one hour of 20 ms samples.
for _ in $(seq 1 180000); do
    r="$(rss_kib "$WPID")"
    (( r > peak )) && peak="$r"
    polls=$((polls + 1))
    if (( polls % 25 == 0 )); then
        state="$(curl -fsS -H "Authorization: Bearer $KEY" "$URL/v1/jobs/$JOB" \
            | python3 -c 'import sys,json;print(json.load(sys.stdin)["state"])')"
        [[ "$state" == succeeded || "$state" == failed || "$state" == cancelled ]] && break
    fi
    sleep 0.02
done
t3=$(date +%s.%N)
result="$(curl -fsS -H "Authorization: Bearer $KEY" "$URL/v1/jobs/$JOB")"
python3 - "$MIB" "$idle" "$peak" "$t0" "$t1" "$t2" "$t3" "$SHA" "$state" "$result" <<'EOF'
import json, sys
mib, idle, peak, t0, t1, t2, t3, sha, state, result = sys.argv[1:]
res = json.loads(result).get("result") or {}
print(json.dumps({
    "file_mib": int(mib),
    "state": state,
    "sha256_matches": res.get("sha256") == sha,
    "upload_s": round(float(t1) - float(t0), 1),
    "assembly_s": round(float(t3) - float(t2), 1),
    "worker_rss_before_mib": round(int(idle) / 1024, 1),
    "worker_rss_peak_mib": round(int(peak) / 1024, 1),
    "worker_rss_growth_mib": round((int(peak) - int(idle)) / 1024, 1),
}))
EOF
