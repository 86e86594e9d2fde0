#!/usr/bin/env bash
# What a read of the jobs collection costs on the MongoDB-compatible server (nx-27017), with
# the index layouts before and after 2026-12-02 (docs/performance.md, "Reads without the TTL
# purge"): a find by _id with and without a TTL index, the outbox and retry-confirmation scans
# with compound against single-field indexes, at 1,000 / 5,000 / 20,000 jobs, insert_many
# with both index sets, and insert_many by command size (1 to 1,000 documents). Starts and
# stops a private nx-27017 on a free loopback port.
#   bench/nx-reads.sh
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
# shellcheck source=../scripts/lib.sh
. "$ROOT/scripts/lib.sh"
ensure_mongo_installed
RUN="$HERE/.run/nx-reads-$$"
mkdir -p "$RUN"
trap 'stop_pid_file "$RUN/mongo/nx.pid" 10; rm -rf "$RUN"' EXIT
port="$(free_port)"
start_private_mongo "$RUN/mongo" "$port" >&2
"$JM_MONGO_VENV/bin/python" - "$port" <<'PY'
import datetime, sys, time, uuid
from pymongo import MongoClient, ASCENDING as A, DESCENDING as D

db = MongoClient("127.0.0.1", int(sys.argv[1]), directConnection=True)["nx_reads"]
LIVE = ["queued", "scheduled", "running"]
SIZES = (1, 8, 32, 64, 128, 1000)

def indexes(col, new):
    col.create_index([("tenant", A), ("list_key", D)])
    col.create_index([("tenant", A), ("state", A), ("list_key", D)])
    col.create_index([("list_key", D)])
    col.create_index([("state", A), ("list_key", D)])
    col.create_index([("tenant", A), ("idempotency_key", A)], unique=True,
                     partialFilterExpression={"idempotency_key": {"$type": "string"}})
    if new:
        col.create_index([("retention.expire_at", A)])
        col.create_index([("outbox.pending", A)], partialFilterExpression={"outbox.pending": 1})
        col.create_index([("enqueue_pending", A)], partialFilterExpression={"enqueue_pending": True})
    else:
        col.create_index([("retention.expire_at", A)], expireAfterSeconds=0)
        col.create_index([("outbox.pending", A), ("list_key", A)],
                         partialFilterExpression={"outbox.pending": 1})
        col.create_index([("enqueue_pending", A), ("list_key", A)],
                         partialFilterExpression={"enqueue_pending": True})

def docs(n):
    out = []
    for _ in range(n):
        k = str(uuid.uuid4())
        out.append({"_id": k, "list_key": k, "tenant": "t", "state": "succeeded", "queue": "q",
                    "kind": "noop", "args": "{}", "attempt": 1, "max_attempts": 3,
                    "retention": {"expire_at": datetime.datetime(2100, 1, 1)}})
    return out

def ms(f, reps=20):
    t = time.perf_counter()
    for _ in range(reps):
        f()
    return (time.perf_counter() - t) / reps * 1000

print("| jobs | layout | find_one by _id | outbox scan | unconfirmed-retry scan | sweep page (state $in) |")
print("|---|---|---|---|---|---|")
for new in (False, True):
    col = db["jobs_new" if new else "jobs_old"]
    col.drop()
    indexes(col, new)
    n = 0
    for target in (1000, 5000, 20000):
        batch = docs(target - n)
        for i in range(0, len(batch), 1000):
            col.insert_many(batch[i:i + 1000])
        n = target
        some = batch[0]["_id"]
        row = [
            ms(lambda: col.find_one({"_id": some})),
            ms(lambda: list(col.find({"outbox.pending": 1}).sort("list_key", 1).limit(500))),
            ms(lambda: list(col.find({"enqueue_pending": True, "list_key": {"$lt": "z"},
                                      "state": {"$in": LIVE}}).sort("list_key", 1).limit(500))),
            ms(lambda: list(col.find({"state": {"$in": LIVE}}, {"queue": 1})
                            .sort("list_key", 1).limit(500)), reps=5),
        ]
        print(f"| {target} | {'now' if new else 'before'} | " + " | ".join(f"{v:.2f} ms" for v in row) + " |")

print()
print("| round | insert_many 1,000 docs/s before | now | 32-doc groups/s before | now |")
print("|---|---|---|---|---|")
for r in range(3):
    rates = []
    for size, count in ((1000, 10), (32, 300)):
        for new in (False, True):
            col = db[f"ins_{new}_{size}_{r}"]
            col.drop()
            indexes(col, new)
            t = time.perf_counter()
            for _ in range(count):
                col.insert_many(docs(size))
            rates.append(size * count / (time.perf_counter() - t))
    print(f"| {r + 1} | {rates[0]:.0f} | {rates[1]:.0f} | {rates[2]:.0f} | {rates[3]:.0f} |")

# What one command costs by its size, with today's index set: group commit puts concurrent
# HTTP submissions into commands of at most 64 documents (about 32 with 64 clients), against
# the ceiling's 1,000 (W1 over HTTP in docs/performance.md).
print()
print("| round | " + " | ".join(f"{k}-doc commands, docs/s" for k in SIZES) + " |")
print("|---|" + "---|" * len(SIZES))
for r in range(3):
    rates = []
    for size in SIZES:
        col = db[f"size_{size}_{r}"]
        col.drop()
        indexes(col, True)
        col.insert_many(docs(2000))
        count = max(1, 4000 // size)
        t = time.perf_counter()
        for _ in range(count):
            col.insert_many(docs(size), ordered=False)
        rates.append(size * count / (time.perf_counter() - t))
    print(f"| {r + 1} | " + " | ".join(f"{v:.0f}" for v in rates) + " |")
db.client.drop_database("nx_reads")
PY
