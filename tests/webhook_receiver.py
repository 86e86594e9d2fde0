#!/usr/bin/env python3
"""A webhook receiver for the integration tests, verifying with the Standard Webhooks
reference library (PyPI `standardwebhooks`).

Every request is verified against each secret in --secrets-file (one per line, re-read on
every request so a test can add the new secret during a rotation) and recorded as one JSON
line in --out: {"n", "headers", "body", "verified_by": [indexes of secrets that verify],
"error", "answered"}. It answers --fail-status for the first --fail-first requests, and
--status after that.
"""

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--secrets-file", required=True)
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--fail-status", type=int, default=500)
    p.add_argument("--status", type=int, default=200)
    args = p.parse_args()
    lock = threading.Lock()
    count = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            with open(args.secrets_file) as f:
                secrets = [s.strip() for s in f if s.strip()]
            verified_by, errors = [], []
            for i, secret in enumerate(secrets):
                try:
                    Webhook(secret).verify(body, headers)
                    verified_by.append(i)
                except WebhookVerificationError as e:
                    errors.append(f"secret {i}: {e}")
            with lock:
                count[0] += 1
                n = count[0]
                status = args.fail_status if n <= args.fail_first else args.status
                record = {
                    "n": n,
                    "headers": headers,
                    "body": body.decode("utf-8", "replace"),
                    "verified_by": verified_by,
                    "error": "; ".join(errors) or None,
                    "answered": status,
                }
                with open(args.out, "a") as f:
                    f.write(json.dumps(record) + "\n")
            payload = json.dumps({"received": n}).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
