#!/usr/bin/env bash
# Run every check and test: rustfmt, clippy, debug build of the binaries, then
# `cargo test --workspace` against a private redis-server and a private
# nx-27017 (MongoDB-compatible) on free ports under .run/test-<pid>/, then the API fuzzer
# (scripts/fuzz.sh: schemathesis against /openapi.json) on the same servers, and before it the
# dashboard's browser tests (tests/ui/, Playwright driving Debian's chromium; JOBMILL_UI_E2E).
# Extra arguments go to `cargo test`, e.g.  scripts/test.sh -p jobmill-tests -- --nocapture
# Test threads: RUST_TEST_THREADS (or JOBMILL_TEST_THREADS), default 4.
# The fuzzer runs only for a full run (no extra arguments), or with JOBMILL_FUZZ=1; JOBMILL_FUZZ=0
# skips it.
#
# Two passes: first everything on a single redis-server, then the cluster pass: a
# private Redis Cluster (scripts/redis-cluster.sh, 3 masters + 3 replicas, free ports,
# under .run/test-<pid>/cluster) whose seeds are exported as JOBMILL_TEST_REDIS_CLUSTER,
# so every test context uses JOBMILL_REDIS_CLUSTER (and tests that need a private Redis
# start a private cluster). The cluster pass runs CLUSTER_SUBSET below (every integration
# test binary but `files` and `http_hardening`; every lifecycle and fault test is in it) with
# JOBMILL_CLUSTER_TEST_THREADS (default 2) threads, as a private cluster is six processes;
# the unit tests, which need no Redis, run in the first pass only.
# JOBMILL_TEST_PASSES chooses: "single,cluster" (default without arguments), "single"
# (default with arguments), "cluster". With arguments, the cluster pass runs those
# arguments instead of the subset.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

if [[ -n "${CI:-}" ]]; then
    export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
fi

# Each stage's wall time, printed as it ends and summed up at the end (CI reads the summary).
STAGE_T0=$SECONDS
STAGES=()
stage_done() {
    local took=$((SECONDS - STAGE_T0))
    STAGES+=("$1 ${took}s")
    log "stage '$1' took ${took}s"
    STAGE_T0=$SECONDS
}
stage_summary() {
    echo "stage times: $(IFS=,; echo "${STAGES[*]}" | sed 's/,/, /g'); total ${SECONDS}s"
}

# ---- prerequisites ----
ensure_cargo
ensure_redis_installed
ensure_mongo_installed
ensure_webhook_venv
ensure_fuzz_venv
if [[ $# -eq 0 || "${JOBMILL_UI_E2E:-}" == "1" ]] && [[ "${JOBMILL_UI_E2E:-}" != "0" ]]; then
    ensure_chromium
    ensure_ui_venv
fi
if ! cargo fmt --version >/dev/null 2>&1; then
    command -v rustup >/dev/null 2>&1 || die "cargo fmt missing and rustup not found"
    rustup component add rustfmt </dev/null
fi
if ! cargo clippy --version >/dev/null 2>&1; then
    command -v rustup >/dev/null 2>&1 || die "cargo clippy missing and rustup not found"
    rustup component add clippy </dev/null
fi
stage_done prerequisites

# ---- static checks and build ----
log "cargo fmt --all -- --check"
cargo fmt --all -- --check
stage_done fmt
log "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
stage_done clippy
# Integration tests spawn the real binaries from target/debug/.
log "cargo build --workspace --bins"
cargo build --workspace --bins
stage_done build

# ---- private servers ----
RUN="$ROOT/.run/test-$$"
rm -rf -- "$RUN"
mkdir -p "$RUN"
SERVERS_STARTED=""
CLUSTER_STARTED=""

# shellcheck disable=SC2317  # invoked via trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$CLUSTER_STARTED" ]]; then
        JOBMILL_CLUSTER_DIR="$RUN/cluster" "$ROOT/scripts/redis-cluster.sh" stop || true
    fi
    if [[ -n "$SERVERS_STARTED" ]]; then
        stop_pid_file "$RUN/redis/redis.pid"
        stop_pid_file "$RUN/mongo/nx.pid" 10
        if [[ "$rc" -ne 0 ]]; then
            _jm_tail_log "$RUN/redis/redis.log" 50
            _jm_tail_log "$RUN/mongo/nx.log" 50
            log "tests failed (exit $rc); server logs kept in $RUN"
            stage_summary
        else
            rm -rf -- "$RUN"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

SERVERS_STARTED=1
redis_port="$(free_port)"
start_private_redis "$RUN/redis" "$redis_port"
mongo_port="$(free_port)"
start_private_mongo "$RUN/mongo" "$mongo_port"

export JOBMILL_TEST_REDIS_URL="redis://127.0.0.1:${redis_port}/"
export JOBMILL_TEST_MONGODB_URI="mongodb://127.0.0.1:${mongo_port}/?directConnection=true"
export JOBMILL_TEST_NX_BIN="$JM_NX_BIN"
JOBMILL_TEST_REDIS_BIN="$(command -v redis-server)"
export JOBMILL_TEST_REDIS_BIN
export JOBMILL_TEST_BIN_DIR="$ROOT/target/debug"
export JOBMILL_TEST_HOOKS_PYTHON="$JM_HOOKS_VENV/bin/python"
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-${JOBMILL_TEST_THREADS:-4}}"

# ---- tests ----
# The cluster pass runs CLUSTER_SUBSET: every integration test binary but `files` and
# `http_hardening`, so .ci/run stays under ~20 minutes on 2 cores. `files` (uploads and
# assembly, whose bytes live in MongoDB) uses Redis only through the job queue that every
# other binary exercises, and `http_hardening` tests HTTP timeouts and limits; every
# lifecycle test, every fault test (faults, cluster, and the SIGKILL tests of datasets and
# webhooks) is in the subset. `JOBMILL_TEST_PASSES=cluster scripts/test.sh -p jobmill-tests`
# runs everything on the cluster.
CLUSTER_SUBSET=(-p jobmill-tests --test lifecycle --test faults --test cluster --test api_contract
    --test store_guards --test catalog --test datasets --test webhooks --test shards
    --test operators --test apalis --test limits)
if [[ $# -eq 0 ]]; then
    PASSES="${JOBMILL_TEST_PASSES:-single,cluster}"
else
    PASSES="${JOBMILL_TEST_PASSES:-single}"
fi
rc=0
: >"$RUN/cargo-test.log"
if [[ ",$PASSES," == *,single,* ]]; then
    log "pass 1 (single redis): cargo test --workspace $* (RUST_TEST_THREADS=$RUST_TEST_THREADS)"
    cargo test --workspace --no-fail-fast "$@" </dev/null 2>&1 | tee -a "$RUN/cargo-test.log" || rc=$?
    stage_done "tests (single redis)"
fi
if [[ "$rc" -eq 0 && ",$PASSES," == *,cluster,* ]]; then
    CLUSTER_STARTED=1
    seeds="$(JOBMILL_CLUSTER_DIR="$RUN/cluster" "$ROOT/scripts/redis-cluster.sh" start)"
    export JOBMILL_TEST_REDIS_CLUSTER="$seeds"
    cluster_args=("$@")
    if [[ $# -eq 0 ]]; then
        cluster_args=("${CLUSTER_SUBSET[@]}")
    fi
    log "pass 2 (redis cluster $seeds): cargo test ${cluster_args[*]} (RUST_TEST_THREADS=${JOBMILL_CLUSTER_TEST_THREADS:-2})"
    RUST_TEST_THREADS="${JOBMILL_CLUSTER_TEST_THREADS:-2}" cargo test --no-fail-fast "${cluster_args[@]}" </dev/null 2>&1 \
        | tee -a "$RUN/cargo-test.log" || rc=$?
    stage_done "tests (redis cluster)"
    unset JOBMILL_TEST_REDIS_CLUSTER
fi
# One closing line summing every test binary (cargo's own last line is a doc-test run of 0).
passed=$(grep -Eo '^test result: [A-Za-z]+\. [0-9]+ passed' "$RUN/cargo-test.log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$RUN/cargo-test.log" | awk '{s+=$1} END {print s+0}')
if [[ "$rc" -ne 0 && "$failed" -eq 0 ]]; then
    failed=1
fi

# ---- dashboard in a real browser ----
# tests/ui/: Playwright drives Debian's chromium against a real API and two workers on the
# private servers above (screenshots under target/ui-screenshots/). Runs for a full run, or
# with JOBMILL_UI_E2E=1; JOBMILL_UI_E2E=0 skips it.
ui_line="ui e2e: not run (arguments given; JOBMILL_UI_E2E=1 runs it)"
if [[ "$rc" -eq 0 ]] && [[ "${JOBMILL_UI_E2E:-}" == "1" || ( $# -eq 0 && "${JOBMILL_UI_E2E:-}" != "0" ) ]]; then
    log "browser tests: pytest tests/ui (chromium $JM_CHROMIUM)"
    ui_rc=0
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 JOBMILL_CHROMIUM="$JM_CHROMIUM" \
        "$JM_UI_VENV/bin/python" -m pytest -q -p no:cacheprovider tests/ui </dev/null 2>&1 \
        | tee "$RUN/ui-e2e.log" || ui_rc=$?
    ui_line="ui e2e: $(grep -Eo '[0-9]+ (passed|failed)[^=]*' "$RUN/ui-e2e.log" | tail -n 1 || true) (exit $ui_rc)"
    if [[ "$ui_rc" -ne 0 ]]; then
        rc="$ui_rc"
    fi
    stage_done "browser tests"
fi

# ---- fuzzer ----
fuzz_line="fuzz: not run (arguments given; JOBMILL_FUZZ=1 runs it)"
if [[ "${JOBMILL_FUZZ:-}" == "1" || ( $# -eq 0 && "${JOBMILL_FUZZ:-}" != "0" ) ]]; then
    log "scripts/fuzz.sh"
    fuzz_rc=0
    "$ROOT/scripts/fuzz.sh" 2>&1 | tee "$RUN/fuzz.log" || fuzz_rc=$?
    fuzz_line="$(grep -E '^fuzz summary:' "$RUN/fuzz.log" | tail -n 1 || true)"
    fuzz_line="${fuzz_line:-fuzz summary: no summary (exit $fuzz_rc)}"
    if [[ "$fuzz_rc" -ne 0 && "$rc" -eq 0 ]]; then
        rc="$fuzz_rc"
    fi
    stage_done fuzz
fi

if [[ "$rc" -eq 0 ]]; then
    log "all checks and tests passed"
fi
echo "summary: ${passed} passed, ${failed} failed"
echo "$ui_line"
echo "$fuzz_line"
if [[ "$rc" -eq 0 ]]; then
    stage_summary
fi
exit "$rc"
