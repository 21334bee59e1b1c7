"""Memory a JetStream duplicate window costs nats-server, measured (docs/shuffler.md, "The duplicate window").

Starts a private nats-server (the project's pinned binary), creates a stream like FIREHOSE (file storage,
S2), and publishes N messages with distinct realistic `Nats-Msg-Id`s (~75 bytes, like a commit's dedup id)
and ~600-byte payloads, twice: once with a duplicate window long enough to hold every id, once with a 1 s
window (ids expire as they arrive). Each run's server RSS is read from /proc after the publishes settle; the
difference is the memory of N ids held in the window. N = rate x window, e.g. 2,000 events/s x 300 s = 600k.

    .tools/venv/bin/python scripts/py/dedup_window_memory.py --ids 600000 1500000
"""

import argparse
import asyncio
import os
import random
import shutil
import socket
import string
import subprocess
import tempfile
import time

import nats
from nats.js.api import StorageType, StreamConfig, StoreCompression


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def quiet(_e: Exception) -> None:
    """Connection errors while the server starts are expected (retried); do not print them."""


def msg_id(i: int, rng: random.Random) -> str:
    did = "".join(rng.choices(string.ascii_lowercase + string.digits, k=24))
    return f"c:did:plc:{did}:3l{i:011d}:app.bsky.feed.like/3l{rng.getrandbits(40):012x}"


async def run(binary: str, ids: int, window_s: float) -> float:
    tmp = tempfile.mkdtemp(prefix="fpaas-dedup-")
    port = free_port()
    conf = os.path.join(tmp, "server.conf")
    with open(conf, "w") as f:
        f.write(
            f'listen: "127.0.0.1:{port}"\nmax_payload: 4MB\n'
            f'jetstream {{\n  store_dir: "{tmp}/js"\n  max_file_store: 100GB\n}}\n'
        )
    proc = subprocess.Popen([binary, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                nc = await nats.connect(f"nats://127.0.0.1:{port}", allow_reconnect=False, error_cb=quiet)
                break
            except Exception:
                await asyncio.sleep(0.1)
        js = nc.jetstream(timeout=10)
        await js.add_stream(
            StreamConfig(
                name="FIREHOSE",
                subjects=["atproto.firehose.>"],
                storage=StorageType.FILE,
                compression=StoreCompression.S2,
                duplicate_window=window_s,
                max_age=86400,
            )
        )
        rng = random.Random(1)
        payload = ("x" * 600).encode()
        batch = 2_000
        for start in range(0, ids, batch):
            for i in range(start, min(start + batch, ids)):
                await nc.publish(
                    "atproto.firehose.commit.app.bsky.feed.like.create",
                    payload,
                    headers={"Nats-Msg-Id": msg_id(i, rng)},
                )
            # Pace by the server: one acked publish per batch keeps the inbound buffer bounded.
            await js.publish(
                "atproto.firehose.commit.app.bsky.feed.like.create",
                payload,
                headers={"Nats-Msg-Id": f"pace-{start}"},
            )
        for _ in range(600):
            info = await js.stream_info("FIREHOSE")
            if info.state.messages >= ids:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(5)  # let the server settle (GC, flushes)
        rss = rss_mb(proc.pid)
        info = await js.stream_info("FIREHOSE")
        await nc.close()
        print(
            f"ids={ids} window={window_s:g}s stored={info.state.messages} server_rss_mb={rss:.1f}",
            flush=True,
        )
        return rss
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


async def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    default_bin = os.path.join(here, "..", "..", ".tools", "venv", "bin", "nats-server")
    ap = argparse.ArgumentParser()
    ap.add_argument("--nats-server", default=os.environ.get("FPAAS_NATS_SERVER", default_bin))
    ap.add_argument("--ids", type=int, nargs="+", default=[600_000])
    a = ap.parse_args()
    for n in a.ids:
        t0 = time.time()
        held = await run(a.nats_server, n, 86_400)
        expired = await run(a.nats_server, n, 1)
        per_id = (held - expired) * 1024 * 1024 / n
        print(
            f"ids={n}: RSS {held:.0f} MB with every id in the window, {expired:.0f} MB with a 1 s window: "
            f"{held - expired:.0f} MB for the window = {per_id:.0f} B per id ({time.time() - t0:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main())
