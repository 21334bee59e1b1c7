"""Independent Standard Webhooks peer with the Python `standardwebhooks` library (not our Rust code), for
crates/webhook/tests/python_oracle.rs.

Two modes:
  receive SECRET   an HTTP server on 127.0.0.1 (a free port) that verifies every POST with
                   `standardwebhooks.Webhook(SECRET).verify(body, headers)`: 204 when it verifies, 401 with the
                   library's error otherwise. Prints `listening <port>` first, then one JSON line per request:
                   {"ok": bool, "id": str|null, "error": str|null, "bytes": int}. Runs until killed.
                   SECRET `-`: read the secret from the first line of stdin, after `listening` (a subscription's
                   secret is known only once it was created with the receiver's URL), and add each request's
                   "body" to its line (the reader must then drain stdout as it goes).
  sign SECRET      reads JSON lines {"id": str, "timestamp": int, "body": str} from stdin and prints, for each,
                   one JSON line {"signature": Webhook(SECRET).sign(id, datetime(timestamp), body)}.
Usage: .tools/venv/bin/python scripts/py/standardwebhooks_peer.py receive|sign SECRET
"""

import json
import sys
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook


def receive(secret: str) -> None:
    wh_holder = []
    print_body = secret == "-"

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                wh_holder[0].verify(body, headers, json_parse=False)
                ok, error, status = True, None, 204
            except Exception as e:  # the library's WebhookVerificationError, or anything it raises
                ok, error, status = False, f"{type(e).__name__}: {e}", 401
            line = {"ok": ok, "id": headers.get("webhook-id"), "error": error, "bytes": len(body)}
            if print_body:
                line["body"] = body.decode("utf-8", "replace")
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()
            print(json.dumps(line), flush=True)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening {server.server_address[1]}", flush=True)
    if secret == "-":
        secret = sys.stdin.readline().strip()
    wh_holder.append(Webhook(secret))
    server.serve_forever()


def sign(secret: str) -> None:
    wh = Webhook(secret)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        ts = datetime.fromtimestamp(req["timestamp"], tz=timezone.utc)
        print(json.dumps({"signature": wh.sign(req["id"], ts, req["body"])}), flush=True)


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("receive", "sign"):
        sys.exit(__doc__)
    mode, secret = sys.argv[1], sys.argv[2]
    receive(secret) if mode == "receive" else sign(secret)


if __name__ == "__main__":
    main()
