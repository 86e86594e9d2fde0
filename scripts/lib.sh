# shellcheck shell=bash
# Shared helpers for jobmill scripts. Source it:  . "$(dirname "$0")/lib.sh"
# Safe under `set -euo pipefail`. Everything listens on 127.0.0.1 only.

if [[ -n "${_JOBMILL_LIB_SOURCED:-}" ]]; then
    return 0
fi
_JOBMILL_LIB_SOURCED=1

# Repo root, derived from this file's location (scripts/..).
jm_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
ROOT="$jm_root"

# Pinned MongoDB-compatible server for local runs and tests (see docs / MONGO.md).
JM_MONGO_PINS="nx-27017==0.8.1 neosqlite==1.17.2 pymongo==4.20.0"
JM_MONGO_VENV="$ROOT/.venv-mongo"
JM_NX_BIN="$JM_MONGO_VENV/bin/nx-27017"

# Pinned Standard Webhooks reference library, used by the tests' webhook receiver.
JM_HOOKS_PINS="standardwebhooks==1.1.0"
JM_HOOKS_VENV="$ROOT/.venv-hooks"

# Pinned API fuzzer (scripts/fuzz.sh runs it against /openapi.json).
JM_FUZZ_PINS="schemathesis==4.32.5 hypothesis==6.170.17"
JM_FUZZ_VENV="$ROOT/.venv-fuzz"

# Pinned browser driver for the dashboard's end-to-end tests (tests/ui/). It drives Debian's
# own chromium (ensure_chromium) over CDP; no browser build is ever downloaded.
JM_UI_PINS="playwright==1.65.2 pytest==9.2.0"
JM_UI_VENV="$ROOT/.venv-ui"
JM_CHROMIUM="/usr/bin/chromium"

log() {
    printf '[jobmill] %s\n' "$*" >&2
}

die() {
    log "ERROR: $*"
    exit 1
}

# Cargo from rustup may not be on PATH in non-login shells.
if ! command -v cargo >/dev/null 2>&1 && [[ -x "${HOME:-/root}/.cargo/bin/cargo" ]]; then
    export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi

ensure_cargo() {
    command -v cargo >/dev/null 2>&1 \
        || die "cargo not found. Install Rust (>= 1.85) with rustup: https://rustup.rs"
    if ! command -v cc >/dev/null 2>&1; then
        log "no C compiler/linker found; installing build-essential"
        jm_apt_install build-essential pkg-config
    fi
}

# Run a command as root (sudo only when we are not root).
jm_as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

_JM_APT_UPDATED=""

# apt-get install without starting any system service (policy-rc.d denies it).
jm_apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; please install manually: $*"
    if [[ -z "$_JM_APT_UPDATED" ]]; then
        log "apt-get update"
        jm_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null
        _JM_APT_UPDATED=1
    fi
    log "apt-get install $*"
    local policy=/usr/sbin/policy-rc.d created="" rc=0
    if [[ ! -e "$policy" ]]; then
        # shellcheck disable=SC2016
        jm_as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
        created=1
    fi
    jm_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" </dev/null || rc=$?
    if [[ -n "$created" ]]; then
        jm_as_root rm -f "$policy"
    fi
    return "$rc"
}

ensure_redis_installed() {
    if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
        return 0
    fi
    jm_apt_install redis-server
    command -v redis-server >/dev/null 2>&1 || die "redis-server still not on PATH after install"
}

ensure_curl_installed() {
    command -v curl >/dev/null 2>&1 || jm_apt_install curl ca-certificates
}

_jm_python_ok() {
    command -v python3 >/dev/null 2>&1 && python3 -c 'import venv, ensurepip' >/dev/null 2>&1
}

# _jm_ensure_venv DIR PINS CHECK: a venv in DIR with the pinned PINS installed, where the
# python statement CHECK succeeds. Cheap when a stamp says the pins are already there.
_jm_ensure_venv() {
    local venv="$1" pins="$2" check="$3" stamp="$1/.jobmill-stamp"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$pins" ]] \
        && "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
        return 0
    fi
    # A venv whose interpreter no longer runs (or a dangling link left in its place) is useless.
    if [[ -L "$venv" && ! -e "$venv" ]] \
        || { [[ -d "$venv" ]] && ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; }; then
        log "$venv is broken; recreating it"
        rm -rf -- "$venv"
    fi
    if [[ ! -x "$venv/bin/python" ]]; then
        if ! _jm_python_ok; then
            jm_apt_install python3 python3-venv
        fi
        log "creating $venv"
        python3 -m venv "$venv"
    fi
    log "installing $pins into $(basename "$venv")"
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install -q --disable-pip-version-check $pins </dev/null
    "$venv/bin/python" -c "$check" || die "$pins did not install into $venv"
    printf '%s\n' "$pins" >"$stamp"
}

ensure_mongo_installed() {
    _jm_ensure_venv "$JM_MONGO_VENV" "$JM_MONGO_PINS" "import pymongo"
    [[ -x "$JM_NX_BIN" ]] || die "nx-27017 was not installed into $JM_MONGO_VENV"
}

# ensure_webhook_venv: .venv-hooks with the pinned `standardwebhooks` package, for
# tests/webhook_receiver.py (the spec's own verifier checks every signature we send).
ensure_webhook_venv() {
    _jm_ensure_venv "$JM_HOOKS_VENV" "$JM_HOOKS_PINS" "import standardwebhooks"
}

# ensure_fuzz_venv: .venv-fuzz with the pinned `schemathesis`, for scripts/fuzz.sh.
ensure_fuzz_venv() {
    _jm_ensure_venv "$JM_FUZZ_VENV" "$JM_FUZZ_PINS" "import schemathesis"
}

# ensure_chromium: Debian's chromium package (the dashboard's browser tests drive it).
ensure_chromium() {
    [[ -x "$JM_CHROMIUM" ]] || jm_apt_install chromium
    [[ -x "$JM_CHROMIUM" ]] || die "chromium still missing at $JM_CHROMIUM after install"
}

# ensure_ui_venv: .venv-ui with the pinned Playwright and pytest, for tests/ui/. The
# PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD guard keeps pip from fetching a browser build; the tests use
# $JM_CHROMIUM and `playwright install` is never run.
ensure_ui_venv() {
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 _jm_ensure_venv "$JM_UI_VENV" "$JM_UI_PINS" "import playwright.sync_api, pytest"
}

_jm_python() {
    if command -v python3 >/dev/null 2>&1; then
        echo python3
    elif [[ -x "$JM_MONGO_VENV/bin/python" ]]; then
        echo "$JM_MONGO_VENV/bin/python"
    else
        die "python3 is required"
    fi
}

# Print a free TCP port on 127.0.0.1.
free_port() {
    "$(_jm_python)" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# True if PORT can be bound on 127.0.0.1 right now (SO_REUSEADDR like real
# servers, so connections in TIME_WAIT do not count as "in use").
port_is_free() {
    "$(_jm_python)" -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()' "$1"
}

# Print PORT if free, otherwise some free port.
preferred_port() {
    if port_is_free "$1"; then echo "$1"; else free_port; fi
}

# True if PORT on 127.0.0.1 accepts a TCP connection.
port_is_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") >/dev/null 2>&1
}

_jm_pid_from_file() {
    local file="$1" pid
    [[ -f "$file" ]] || return 1
    pid="$(tr -dc '0-9' <"$file" 2>/dev/null || true)"
    [[ -n "$pid" && "$pid" -gt 1 ]] || return 1
    echo "$pid"
}

# True if the PID in FILE is alive and its command line contains PATTERN.
# Used to clean up our own leftovers after a hard kill, never anything else.
pid_file_matches() {
    local file="$1" pattern="$2" pid
    pid="$(_jm_pid_from_file "$file")" || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$pattern"
}

# stop_pid_files TIMEOUT FILE... : SIGTERM every live PID recorded in the
# files, wait up to TIMEOUT seconds for all of them, then SIGKILL leftovers.
stop_pid_files() {
    local timeout="$1"
    shift
    local file pid pids=() waited=0
    for file in "$@"; do
        pid="$(_jm_pid_from_file "$file")" || continue
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    [[ ${#pids[@]} -gt 0 ]] || return 0
    local deadline=$((timeout * 10)) alive
    while :; do
        alive=()
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive+=("$pid")
        done
        [[ ${#alive[@]} -gt 0 ]] || break
        if ((waited >= deadline)); then
            log "process(es) ${alive[*]} still alive after ${timeout}s; sending SIGKILL"
            kill -KILL "${alive[@]}" 2>/dev/null || true
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    # Reap our own children (no-op for processes we did not fork).
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    return 0
}

# stop_pid_file FILE [TIMEOUT=5]: TERM, then KILL after TIMEOUT seconds.
stop_pid_file() {
    stop_pid_files "${2:-5}" "$1"
}

_jm_tail_log() {
    if [[ -f "$1" ]]; then
        log "---- last ${2:-30} lines of $1 ----"
        tail -n "${2:-30}" "$1" >&2 || true
    fi
}

# Background children should run in their own session, so that a Ctrl-C in
# the terminal reaches only the calling script, which then stops them in
# order. Prefix background commands with "${JM_SETSID[@]}". Without job
# control the forked child is not a process-group leader, so setsid(1) does
# not fork again and $! is still the PID of the program itself. (With `set -m`
# each job already gets its own process group, and setsid would fork.)
JM_SETSID=()
if [[ $- != *m* ]] && command -v setsid >/dev/null 2>&1; then
    JM_SETSID=(setsid)
fi

# start_private_redis DIR PORT: ephemeral redis (no persistence), PID in DIR/redis.pid.
start_private_redis() {
    local dir="$1" port="$2" pid deadline
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd -P)"
    if pid_file_matches "$dir/redis.pid" "redis-server"; then
        log "stopping leftover redis from a previous run ($dir/redis.pid)"
        stop_pid_file "$dir/redis.pid"
    fi
    rm -f "$dir/redis.pid"
    "${JM_SETSID[@]}" redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$dir" --daemonize no --logfile "$dir/redis.log" </dev/null >/dev/null 2>&1 &
    pid=$!
    echo "$pid" >"$dir/redis.pid"
    deadline=$((SECONDS + 10))
    while ((SECONDS < deadline)); do
        if [[ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null || true)" == "PONG" ]]; then
            log "redis ready on 127.0.0.1:$port (pid $pid)"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    _jm_tail_log "$dir/redis.log"
    stop_pid_file "$dir/redis.pid"
    die "redis-server did not answer PING on 127.0.0.1:$port within 10s (log: $dir/redis.log)"
}

# start_private_mongo DIR PORT: nx-27017 with data in DIR/data, PID in DIR/nx.pid.
start_private_mongo() {
    local dir="$1" port="$2" pid deadline
    mkdir -p "$dir/data"
    dir="$(cd "$dir" && pwd -P)"
    if pid_file_matches "$dir/nx.pid" "nx-27017"; then
        log "stopping leftover nx-27017 from a previous run ($dir/nx.pid)"
        stop_pid_file "$dir/nx.pid"
    fi
    # nx-27017 writes its own PID file and refuses to start if the recorded PID
    # is alive (e.g. reused by an unrelated process), so clear a stale one.
    rm -f "$dir/nx.pid"
    "${JM_SETSID[@]}" "$JM_NX_BIN" --data-dir "$dir/data" --host 127.0.0.1 -p "$port" \
        --log-file "$dir/nx.log" --pid-file "$dir/nx.pid" \
        </dev/null >>"$dir/nx.stdout.log" 2>&1 &
    pid=$!
    deadline=$((SECONDS + 15))
    while ((SECONDS < deadline)); do
        if port_is_open "$port" && "$JM_MONGO_VENV/bin/python" - "$port" <<'PY' >/dev/null 2>&1; then
import sys
from pymongo import MongoClient
c = MongoClient("127.0.0.1", int(sys.argv[1]), directConnection=True,
                serverSelectionTimeoutMS=1000, connectTimeoutMS=1000)
c.admin.command("ping")
PY
            # Normally nx-27017 has written it; make sure it names this process.
            echo "$pid" >"$dir/nx.pid"
            log "nx-27017 ready on 127.0.0.1:$port (pid $pid, data $dir/data)"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    _jm_tail_log "$dir/nx.log"
    _jm_tail_log "$dir/nx.stdout.log"
    echo "$pid" >"$dir/nx.pid"
    stop_pid_file "$dir/nx.pid"
    die "nx-27017 did not answer ping on 127.0.0.1:$port within 15s (log: $dir/nx.log)"
}
