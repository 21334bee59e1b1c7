"""Baseline for `fpaas bench ingest`: a Python firehose ingester of the kind seed-style deployments run today.

It reads a relay with the `atproto` SDK's firehose client, parses each frame and its CAR with the SDK, builds one
Jetstream-style JSON event per record operation and publishes it to JetStream with `nats-py` (with a
`Nats-Msg-Id`, a bounded number of publishes in flight). It stops after --events events or --seconds seconds
and prints one JSON line: {"events": N, "errors": E, "seconds": S, "events_per_s": R}, where N counts acked
publishes and S runs from the first frame to the last ack.

Usage: python ingest_baseline.py --relay ws://127.0.0.1:PORT --nats nats://127.0.0.1:4222 --events 20000
"""

import argparse
import asyncio
import json
import time

import nats
from atproto import CAR, AsyncFirehoseSubscribeReposClient, firehose_models, models, parse_subscribe_repos_message


def to_jsonable(value):
    """ATProto data model to JSON: CIDs as {"$link"}, bytes as {"$bytes"} (base64 omitted for speed)."""
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": len(value)}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return {"$link": str(value)}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--relay", required=True)
    ap.add_argument("--nats", required=True)
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--in-flight", type=int, default=256)
    args = ap.parse_args()

    nc = await nats.connect(args.nats)
    js = nc.jetstream()
    client = AsyncFirehoseSubscribeReposClient(base_uri=args.relay.rstrip("/") + "/xrpc")
    sem = asyncio.Semaphore(args.in_flight)
    pending = set()
    state = {"events": 0, "start": None, "errors": 0, "stopping": False}
    deadline = time.monotonic() + args.seconds

    async def publish(subject: str, payload: bytes, msg_id: str) -> None:
        try:
            await js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id})
        except Exception:  # noqa: BLE001 - counted, like a real ingester would log it
            state["errors"] += 1
        finally:
            sem.release()

    async def on_message(message: firehose_models.MessageFrame) -> None:
        if state["stopping"]:
            return
        if state["start"] is None:
            state["start"] = time.monotonic()
        commit = parse_subscribe_repos_message(message)
        if not isinstance(commit, models.ComAtprotoSyncSubscribeRepos.Commit):
            return
        car = CAR.from_bytes(commit.blocks)
        for op in commit.ops:
            collection, _, rkey = op.path.partition("/")
            event = {
                "did": commit.repo,
                "time_us": int(time.time() * 1e6),
                "kind": "commit",
                "seq": commit.seq,
                "commit": {"rev": commit.rev, "operation": op.action, "collection": collection, "rkey": rkey},
            }
            if op.action != "delete" and op.cid is not None:
                record = car.blocks.get(op.cid)
                event["commit"]["record"] = to_jsonable(record)
                event["commit"]["cid"] = str(op.cid)
            subject = "atproto.firehose.commit.%s.%s" % (op.action, collection)
            msg_id = "c:%s:%s:%s" % (commit.repo, commit.rev, op.path)
            await sem.acquire()
            task = asyncio.create_task(publish(subject, json.dumps(event).encode(), msg_id))
            pending.add(task)
            task.add_done_callback(pending.discard)
            state["events"] += 1
        if state["events"] >= args.events and not state["stopping"]:
            state["stopping"] = True
            await client.stop()

    async def watchdog() -> None:
        # The deadline must fire even when no frame arrives (e.g. the relay went quiet).
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        state["stopping"] = True
        await client.stop()

    guard = asyncio.create_task(watchdog())
    await client.start(on_message)
    guard.cancel()
    if pending:
        await asyncio.gather(*pending)
    # Time from the first frame to the last ack.
    elapsed = time.monotonic() - (state["start"] or time.monotonic())
    await nc.drain()
    acked = state["events"] - state["errors"]
    print(json.dumps({
        "events": acked,
        "errors": state["errors"],
        "seconds": round(elapsed, 3),
        "events_per_s": round(acked / elapsed, 1) if elapsed > 0 else 0.0,
    }))


if __name__ == "__main__":
    asyncio.run(main())
