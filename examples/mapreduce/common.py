"""What both MapReduce examples share: a local FPaaS stack on free ports (`fpaas dev`: nats-server, the shuffler on
relay-sim, the API and a worker, in a temporary state directory), calls to its HTTP API, and webhook receivers that
verify every batch with the `standardwebhooks` library before handing it on."""

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import standardwebhooks

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ADMIN = "example-admin-token"


def free_port_block(n):
    """The first of n consecutive free loopback ports."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n >= 65535:
            continue
        ok = True
        for p in range(base, base + n):
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


class Stack:
    """`fpaas dev` on free ports; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, rate=350.0):
        base = free_port_block(8)
        self.state = tempfile.mkdtemp(prefix="fpaas-example-")
        self.api = f"http://127.0.0.1:{base + 3}"
        self.ops = f"http://127.0.0.1:{base + 2}"
        binary = os.environ.get("FPAAS_BIN", os.path.join(ROOT, "target", "release", "fpaas"))
        nats = os.environ.get("FPAAS_NATS_SERVER", os.path.join(ROOT, ".tools", "venv", "bin", "nats-server"))
        args = [binary, "dev", "--listen", "127.0.0.1:0", "--rate", str(rate),
                "--nats-server", nats,
                "--nats-port", str(base), "--nats-monitor-port", str(base + 1),
                "--metrics-listen", f"127.0.0.1:{base + 2}", "--api-listen", f"127.0.0.1:{base + 3}",
                "--demo-receiver", f"127.0.0.1:{base + 4}", "--cluster-port", str(base + 5),
                "--state-dir", self.state, "--stream-max-bytes", str(256 * 1024 * 1024),
                "--admin-token", ADMIN]
        self.log = open(os.path.join(self.state, "dev.log"), "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fpaas dev exited; see {self.log.name}")
            try:
                with urllib.request.urlopen(self.ops + "/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        else:
            raise RuntimeError("fpaas dev did not become ready")
        for attempt in range(50):
            try:
                tenant = self.call("POST", "/v1/tenants", {"name": "example"}, token=ADMIN)
                break
            except (RuntimeError, urllib.error.URLError, OSError):
                if attempt == 49:
                    raise
                time.sleep(0.3)
        self.token = tenant["token"]

    def call(self, method, path, body=None, token=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api + path, data=data, method=method)
        req.add_header("authorization", "Bearer " + (token or self.token))
        if data is not None:
            req.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                text = r.read()
                return json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{method} {path}: {e.code} {e.read().decode(errors='replace')}") from None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Receiver:
    """A webhook receiver on a free port. `handle(batch)` gets each verified batch (parsed) and returns the JSON
    to answer with (or None for an empty 204)."""

    def __init__(self, handle):
        self.secret = None
        self.seen = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                try:
                    standardwebhooks.Webhook(outer.secret).verify(body, dict(self.headers))
                except Exception as e:  # a bad signature is refused, and the sender retries
                    self.send_response(401)
                    self.end_headers()
                    print(f"refused a batch: {e}", file=sys.stderr)
                    return
                batch = json.loads(body)
                answer = outer.handle(batch)
                data = json.dumps(answer).encode() if answer is not None else b""
                self.send_response(200 if data else 204)
                if data:
                    self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.handle = handle
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


def emit(record):
    """One line of the example's output: JSON, flushed (the test reads it)."""
    print(json.dumps(record, sort_keys=True), flush=True)
