"""A real jobmill stack for the dashboard's browser tests, and a headless Chromium.

The stack: one `jobmill-api` and two `jobmill-worker` processes (the debug binaries under
JOBMILL_TEST_BIN_DIR) on the private redis-server and nx-27017 that scripts/test.sh started
(JOBMILL_TEST_REDIS_URL, JOBMILL_TEST_MONGODB_URI), under a key prefix and database of their
own. The browser is Debian's chromium (/usr/bin/chromium) driven by Playwright over CDP; no
browser build is downloaded, and the flags keep it from connecting anywhere.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest
from playwright.sync_api import sync_playwright

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHOTS = ROOT / "target" / "ui-screenshots"
CHROMIUM = os.environ.get("JOBMILL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
KEYS = {
    "ops": ("ops-e2e-0123456789abcdef", "operator"),
    "eyes": ("eyes-e2e-0123456789abcdef", "viewer"),
    "alice": ("alice-e2e-0123456789abcdef", "submitter"),
    "bob": ("bob-e2e-0123456789abcdef0", "submitter"),
}
# Queues the workers consume: `uip` is paused and resumed by a test.
QUEUES = "default,uip,webhooks"
LIMIT = 60.0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def until(what, f, limit=LIMIT, every=0.2):
    """Poll f until it returns a truthy value (a hang bound, not a speed check)."""
    end = time.monotonic() + limit
    while True:
        v = f()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(every)


class Stack:
    def __init__(self):
        redis = os.environ["JOBMILL_TEST_REDIS_URL"]
        mongo = os.environ["JOBMILL_TEST_MONGODB_URI"]
        self.bin = pathlib.Path(os.environ.get("JOBMILL_TEST_BIN_DIR", ROOT / "target" / "debug"))
        tag = uuid.uuid4().hex[:8]
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.logs = ROOT / "target" / "ui-e2e-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "JOBMILL_REDIS_URL": redis,
            "JOBMILL_MONGODB_URI": mongo,
            "JOBMILL_MONGODB_DB": f"ui_e2e_{tag}",
            "JOBMILL_KEY_PREFIX": f"ui:{tag}",
            "JOBMILL_API_ADDR": f"127.0.0.1:{port}",
            "JOBMILL_API_KEYS": ",".join(f"{n}:{k}:{r}" for n, (k, r) in KEYS.items()),
            "JOBMILL_UI_SESSION_SECRET": "e2e-session-secret-" + "x" * 24,
            "JOBMILL_QUEUES": QUEUES,
            "JOBMILL_CONCURRENCY": "8",
            "JOBMILL_LEASE_TTL": "3s",
            "JOBMILL_RETRY_BASE": "100ms",
            "JOBMILL_RETRY_MAX": "1s",
            "JOBMILL_SHUTDOWN_TIMEOUT": "5s",
            "JOBMILL_LOG": "warn",
            "JOBMILL_WEBHOOK_DESTINATIONS": "127.0.0.1",
        }
        self.procs = []

    def spawn(self, name, binary):
        log = open(self.logs / f"{name}.log", "wb")
        p = subprocess.Popen(
            [str(self.bin / binary)],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(p)
        return p

    def start(self):
        self.spawn("api", "jobmill-api")
        until("the API is ready", lambda: self.status("/readyz") == 200)
        self.spawn("worker-1", "jobmill-worker")
        self.spawn("worker-2", "jobmill-worker")
        until(
            "two live workers",
            lambda: sum(
                1 for w in self.api("GET", "/v1/workers", "ops")[1]["workers"] if w["state"] == "running"
            )
            == 2,
        )

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def status(self, path):
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as r:
                return r.status
        except (urllib.error.URLError, OSError):
            return 0

    def api(self, method, path, who, body=None):
        """(status, JSON) of a JSON API call with `who`'s key."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", "Bearer " + KEYS[who][0])
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def submit(self, who, job):
        status, body = self.api("POST", "/v1/jobs", who, job)
        assert status == 202, (status, body)
        return body["id"]

    def job(self, who, id):
        status, body = self.api("GET", f"/v1/jobs/{id}", who)
        assert status == 200, (status, body)
        return body

    def queue(self, name):
        _, body = self.api("GET", "/v1/queues", "ops")
        return next((q for q in body["queues"] if q["name"] == name), None)


@pytest.fixture(scope="session")
def stack():
    s = Stack()
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Session:
    """A signed-in browser tab, recording dialogs and console errors."""

    def __init__(self, browser, stack, who, **options):
        options.setdefault("viewport", {"width": 1100, "height": 760})
        self.context = browser.new_context(base_url=stack.base, **options)
        self.page = self.context.new_page()
        self.dialogs = []
        self.console_errors = []
        self.page.on("dialog", self._on_dialog)
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        self.page.on("pageerror", lambda e: self.console_errors.append(str(e)))
        self.page.goto("/ui/login")
        self.page.fill("#key", KEYS[who][0])
        self.page.click("button[type=submit]")
        self.page.wait_for_url("**/ui/")

    def _on_dialog(self, d):
        self.dialogs.append(d.message)
        d.dismiss()

    def csrf(self):
        return self.page.get_attribute("input[name=csrf_token]", "value")

    def shot(self, name):
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


@pytest.fixture
def sign_in(browser, stack, request):
    sessions = []

    def make(who, **options):
        s = Session(browser, stack, who, **options)
        sessions.append(s)
        return s

    yield make
    for i, s in enumerate(sessions):
        # Every test leaves a screenshot of where it ended.
        try:
            s.shot(f"{request.node.name}-{i}")
        finally:
            s.context.close()
