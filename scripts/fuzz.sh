#!/usr/bin/env bash
# Fuzz the HTTP API against its own OpenAPI document with a pinned schemathesis: every check
# (server errors, status codes, content types, headers, response schemas, positive data
# accepted, negative data rejected, unsupported methods, auth...), the examples, coverage,
# fuzzing and stateful phases, a fixed seed and a bounded number of examples.
# Expected statuses that depend on state or the outside world are listed, with reasons, in
# scripts/schemathesis.toml.
#
# Runs on a private stack: the built target/debug/jobmill-api and one jobmill-worker, on a
# fresh Redis key prefix and MongoDB database. It uses the servers of scripts/test.sh when
# JOBMILL_TEST_REDIS_URL / JOBMILL_TEST_MONGODB_URI are set, or starts its own.
# Callable alone:  scripts/fuzz.sh   (extra arguments go to `schemathesis run`, e.g.
# --include-path-regex uploads)
# Knobs: JOBMILL_FUZZ_SEED (default 20261201), JOBMILL_FUZZ_EXAMPLES (default 100; about 2-3 minutes on 2 cores).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

ensure_cargo
ensure_fuzz_venv

SEED="${JOBMILL_FUZZ_SEED:-20261201}"
EXAMPLES="${JOBMILL_FUZZ_EXAMPLES:-100}"
started=$SECONDS

RUN="$ROOT/.run/fuzz-$$"
rm -rf -- "$RUN"
mkdir -p "$RUN"
OWN_SERVERS=""

# shellcheck disable=SC2317  # invoked via trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid_files 10 "$RUN/worker.pid" "$RUN/api.pid"
    if [[ -n "$OWN_SERVERS" ]]; then
        stop_pid_file "$RUN/redis/redis.pid"
        stop_pid_file "$RUN/mongo/nx.pid" 10
    fi
    if [[ "$rc" -ne 0 ]]; then
        _jm_tail_log "$RUN/api.log" 30
        _jm_tail_log "$RUN/worker.log" 30
        log "fuzzing failed (exit $rc); logs and reports kept in $RUN"
    else
        rm -rf -- "$RUN"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ ! -x target/debug/jobmill-api || ! -x target/debug/jobmill-worker || -z "${JOBMILL_TEST_BIN_DIR:-}" ]]; then
    log "cargo build --workspace --bins"
    cargo build --workspace --bins
fi

if [[ -n "${JOBMILL_TEST_REDIS_URL:-}" && -n "${JOBMILL_TEST_MONGODB_URI:-}" ]]; then
    redis_url="$JOBMILL_TEST_REDIS_URL"
    mongo_uri="$JOBMILL_TEST_MONGODB_URI"
else
    ensure_redis_installed
    ensure_mongo_installed
    OWN_SERVERS=1
    redis_port="$(free_port)"
    start_private_redis "$RUN/redis" "$redis_port"
    mongo_port="$(free_port)"
    start_private_mongo "$RUN/mongo" "$mongo_port"
    redis_url="redis://127.0.0.1:${redis_port}/"
    mongo_uri="mongodb://127.0.0.1:${mongo_port}/?directConnection=true"
fi

api_port="$(free_port)"
key="fuzz-operator-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
tag="$$_$RANDOM"
export JOBMILL_REDIS_URL="$redis_url"
export JOBMILL_MONGODB_URI="$mongo_uri"
export JOBMILL_MONGODB_DB="fuzz_$tag"
export JOBMILL_KEY_PREFIX="fuzz:$tag"
export JOBMILL_API_ADDR="127.0.0.1:$api_port"
export JOBMILL_API_KEYS="fuzz:$key:operator"
# Small parts, so generated part bodies can be whole parts.
export JOBMILL_UPLOAD_PART_SIZE=65536
# Callbacks may only go to loopback. The API refuses private addresses that are not
# allow-listed, but it accepts public ones (https://example.com/...): those would be sent by a
# worker of the `webhooks` queue. So the fuzz stack runs no such worker (--queues default
# below): deliveries stay queued and nothing the fuzzer invents ever leaves this machine.
export JOBMILL_WEBHOOK_ALLOW="127.0.0.1,localhost"
# Loopback only, whatever URL the fuzzer invents: anything else is refused at submit.
export JOBMILL_WEBHOOK_DESTINATIONS="127.0.0.1,localhost,[::1]"
export JOBMILL_LOG="${JOBMILL_LOG:-warn}"

"${JM_SETSID[@]}" target/debug/jobmill-api </dev/null >"$RUN/api.log" 2>&1 &
echo $! >"$RUN/api.pid"
"${JM_SETSID[@]}" target/debug/jobmill-worker --queues default --concurrency 4 \
    </dev/null >"$RUN/worker.log" 2>&1 &
echo $! >"$RUN/worker.pid"

base="http://127.0.0.1:$api_port"
deadline=$((SECONDS + 30))
until [[ "$("$JM_FUZZ_VENV/bin/python" -c 'import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=2).status)
except Exception:
    print(0)' "$base/readyz")" == "200" ]]; do
    ((SECONDS < deadline)) || die "the API did not become ready on $base within 30s"
    pid_file_matches "$RUN/api.pid" jobmill-api || die "the API exited (log: $RUN/api.log)"
    sleep 0.2
done
log "fuzz stack ready: API $base (db $JOBMILL_MONGODB_DB), worker on the default queue only"

# Real resources for the fuzzer to find, bound to the path ids by dictionaries appended to a
# copy of the committed configuration (schemathesis reads dictionary files next to it).
mkdir -p "$RUN/ids"
"$JM_FUZZ_VENV/bin/python" "$ROOT/scripts/fuzz_seed.py" "$base" "$key" "$RUN/ids"
cp "$ROOT/scripts/schemathesis.toml" "$RUN/schemathesis.toml"
for dict in "$RUN"/ids/*.dict; do
    name="$(basename "$dict" .dict)"
    printf '\n[dictionaries.%s]\nfrom-file = "ids/%s.dict"\n' "$name" "$name" >>"$RUN/schemathesis.toml"
done

log "schemathesis (seed $SEED, $EXAMPLES examples per operation)"
rc=0
"$JM_FUZZ_VENV/bin/schemathesis" --no-color --config-file "$RUN/schemathesis.toml" run \
    "$base/openapi.json" \
    --header "Authorization: Bearer $key" \
    --checks all \
    --phases examples,coverage,fuzzing,stateful \
    --seed "$SEED" \
    --max-examples "$EXAMPLES" \
    --workers 1 \
    --report junit,ndjson --report-dir "$RUN/report" \
    "$@" </dev/null 2>&1 | tee "$RUN/schemathesis.log" || rc=$?

elapsed=$((SECONDS - started))
# schemathesis' closing line, e.g. "==== 6 failures, 3 errors in 17.16s ====", and its case count.
closing="$(grep -E '^=+ .* in [0-9.]+s =+$' "$RUN/schemathesis.log" | tail -n 1 | tr -d '=' | xargs || true)"
cases="$(grep -E '^ +[0-9]+ generated' "$RUN/schemathesis.log" | tail -n 1 | xargs || true)"
summary="schemathesis: ${closing:-no summary}; test cases: ${cases:-unknown}"
if [[ "$rc" -eq 0 ]]; then
    echo "fuzz summary: 0 failures (seed $SEED, ${elapsed}s) ${summary}"
else
    echo "fuzz summary: FAILED, exit $rc (seed $SEED, ${elapsed}s) ${summary}"
fi
exit "$rc"
