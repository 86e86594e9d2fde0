"""Seed the fuzz stack with one of everything, so the fuzzer reaches real resources.

Usage: fuzz_seed.py BASE_URL KEY OUT_DIR

Creates files (assembled by the worker), an open upload, a dataset, webhook endpoints (to a
loopback URL: nothing listens there, and the fuzz stack runs no `webhooks` worker anyway),
jobs in several states and their deliveries. Writes one libFuzzer-style dictionary per kind of
id into OUT_DIR (`jobs.dict`, `files.dict`, ...), which scripts/fuzz.sh binds to the path
parameters of scripts/schemathesis.toml.
"""

import hashlib
import json
import sys
import time
import urllib.error
import urllib.request

BASE, KEY, OUT = sys.argv[1], sys.argv[2], sys.argv[3]


def call(method, path, body=None, raw=None, ctype="application/json"):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(BASE + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + KEY)
    if data is not None:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=60) as res:
            return res.status, json.loads(res.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def ok(answer, *statuses):
    status, body = answer
    if status not in statuses:
        sys.exit(f"fuzz_seed: expected {statuses}, got {status}: {body}")
    return body


def wait_state(job, states):
    deadline = time.time() + 60
    while time.time() < deadline:
        j = ok(call("GET", f"/v1/jobs/{job}?wait=5"), 200)
        if j["state"] in states:
            return j
    sys.exit(f"fuzz_seed: job {job} never reached {states}")


def file_of(text):
    data = text.encode()
    up = ok(call("POST", "/v1/uploads", {"filename": "fuzz.csv", "content_type": "text/csv",
                                         "sha256": hashlib.sha256(data).hexdigest()}), 201)
    ok(call("PUT", f"/v1/uploads/{up['id']}/parts/0", raw=data, ctype="application/octet-stream"), 200)
    job = ok(call("POST", f"/v1/uploads/{up['id']}/complete"), 202)
    j = wait_state(job["id"], ["succeeded", "failed", "cancelled"])
    if j["state"] != "succeeded":
        sys.exit(f"fuzz_seed: assembly {j}")
    return j["result"]["file_id"]


csv = "sku,name,price\n" + "".join(f"s{i},item {i},{i}.5\n" for i in range(120))
files = [file_of(csv)]
files_delete = [file_of("a,b\n1,2\n")]
uploads = [ok(call("POST", "/v1/uploads", {"filename": "open.bin"}), 201)["id"]]

imp = ok(call("POST", "/v1/jobs", {"kind": "bulk_import", "args": {
    "file_id": files[0], "format": "csv", "dataset": "fuzz_rows", "key": "sku"}}), 202)
if wait_state(imp["id"], ["succeeded", "failed", "cancelled"])["state"] != "succeeded":
    sys.exit("fuzz_seed: import failed")

hook = "http://127.0.0.1:9/fuzz"
webhooks = [ok(call("POST", "/v1/webhooks", {"url": hook, "events": [
    "job.succeeded", "job.failed", "job.cancelled", "job.progress"]}), 201)["id"]]
webhooks_delete = [ok(call("POST", "/v1/webhooks", {"url": hook}), 201)["id"]]

done = ok(call("POST", "/v1/jobs", {"kind": "noop", "args": {"n": 1}, "callback_url": hook + "/cb"}), 202)["id"]
failed = ok(call("POST", "/v1/jobs", {"kind": "fail", "args": {"times": 100, "mode": "permanent"},
                                      "max_attempts": 1}), 202)["id"]
later = ok(call("POST", "/v1/jobs", {"kind": "noop", "delay_ms": 3_600_000}), 202)["id"]
wait_state(done, ["succeeded"])
wait_state(failed, ["failed"])
deliveries = []
deadline = time.time() + 30
while not deliveries and time.time() < deadline:
    deliveries = [d["id"] for d in ok(call("GET", f"/v1/jobs/{done}/deliveries"), 200)["deliveries"]]
    time.sleep(0.2)
if not deliveries:
    print("fuzz_seed: the finished job has no deliveries yet; delivery operations get unknown ids")
    deliveries = ["dlv_unknown"]

# Daily schedules (they never fire during a fuzz run); one to be deleted.
schedules = [ok(call("POST", "/v1/schedules", {"name": "fuzz-nightly", "cron": "0 3 * * *",
                                               "job": {"kind": "noop"}}), 201)["name"]]
schedules_delete = [ok(call("POST", "/v1/schedules", {"name": "fuzz-delete", "cron": "0 3 * * *",
                                                      "job": {"kind": "noop"}}), 201)["name"]]

for name, values in {
    "jobs": [done, failed, later],
    "files": files,
    "files_delete": files_delete,
    "uploads": uploads,
    "datasets": ["fuzz_rows"],
    "webhooks": webhooks,
    "webhooks_delete": webhooks_delete,
    "deliveries": deliveries,
    "schedules": schedules,
    "schedules_delete": schedules_delete,
}.items():
    with open(f"{OUT}/{name}.dict", "w", encoding="utf-8") as fd:
        fd.writelines(f'"{v}"\n' for v in values)
print(f"fuzz_seed: {len(files) + len(files_delete)} files, 1 dataset, {len(webhooks) + len(webhooks_delete)} "
      f"endpoints, 3 jobs, {len(deliveries)} deliveries")
