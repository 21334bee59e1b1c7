"""Example 2, a "serverless" reducer: subscription A sends batches of new posts to a webhook (this script's
reducer) which answers each batch with output events — per author in the batch: posts, words, hashtags — and
FPaaS publishes those answers into the topic `post_stats`; subscription B takes that topic as its source and
delivers to a second webhook, which prints them. Then A is paused, B drains, and the last line compares what B
received with what the reducer answered: each answer event exactly once, nothing else.

    bash examples/mapreduce/run.sh reducer [--run-secs 30]
"""

import argparse
import re
import sys
import threading
import time

from common import Receiver, Stack, emit

TAG = re.compile(r"#(\w+)")


def reduce_batch(batch):
    """The reducer: the same batch always gives the same answer (a retried batch publishes the same ids)."""
    per_author = {}
    for event in batch["events"]:
        post = event["data"]
        text = post.get("text") or ""
        a = per_author.setdefault(post["did"], {"author": post["did"], "posts": 0, "words": 0, "hashtags": []})
        a["posts"] += 1
        a["words"] += len(text.split())
        a["hashtags"] = sorted(set(a["hashtags"]) | set(TAG.findall(text)))
    return {"events": [dict(v, batch=batch["batch_id"]) for _, v in sorted(per_author.items())]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-secs", type=float, default=30)
    ap.add_argument("--rate", type=float, default=350)
    args = ap.parse_args()

    lock = threading.Lock()
    answered = {}  # batch id -> answer events (first answer; a retry answers the same)
    chained = []

    def reducer(batch):
        answer = reduce_batch(batch)
        with lock:
            answered.setdefault(batch["batch_id"], answer["events"])
        return answer

    def printer(batch):
        with lock:
            for e in batch["events"]:
                chained.append(e["data"])
                emit({"stage": "B", "event": e["data"]})
        return None

    stack = Stack(rate=args.rate)
    try:
        r_reduce, r_print = Receiver(reducer), Receiver(printer)
        stack.call("POST", "/v1/topics", {"name": "post_stats", "max_age_secs": 3600, "max_bytes": 64 << 20})
        a = stack.call("POST", "/v1/subscriptions", {
            "name": "posts -> reducer",
            "filter": {"kinds": ["commit"], "collections": ["app.bsky.feed.post"], "operations": ["create"]},
            "transform": "{did: did, text: commit.record.text}",
            "batching": {"max_events": 50, "max_wait_ms": 1000},
            "delivery": {"type": "webhook", "url": r_reduce.url, "output_topic": "post_stats"},
        })
        r_reduce.secret = a["secrets"][0]["secret"]
        b = stack.call("POST", "/v1/subscriptions", {
            "name": "post_stats -> printer",
            "source": {"topic": "post_stats"},
            "start": {"at": "retention_start"},
            "batching": {"max_events": 100, "max_wait_ms": 500},
            "delivery": {"type": "webhook", "url": r_print.url},
        })
        r_print.secret = b["secrets"][0]["secret"]
        time.sleep(args.run_secs)
        stack.call("PATCH", f"/v1/subscriptions/{a['id']}", {"state": "paused"})
        # Pausing A may cut one batch between the reducer's answer and its publish (it stays pending until A is
        # resumed): at most one answered batch may be missing from B; nothing else may differ.
        deadline = time.time() + 30
        while True:
            with lock:
                want = {(e["batch"], e["author"]): e for evs in answered.values() for e in evs}
                keys = [(e["batch"], e["author"]) for e in chained]
                got = dict(zip(keys, chained))
            duplicates = len(keys) - len(got)
            unexpected = sum(1 for k, e in got.items() if want.get(k) != e)
            missing = {k[0] for k in want if k not in got}
            ok = bool(want) and duplicates == 0 and unexpected == 0 and len(missing) <= 1
            if (ok and not missing) or time.time() > deadline:
                break
            time.sleep(0.5)
        emit({"summary": True, "reducer_batches": len(answered), "answer_events": len(want),
              "chained_events": len(keys), "duplicates": duplicates, "unexpected": unexpected,
              "missing_batches": len(missing), "match": ok})
        return 0 if ok else 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
