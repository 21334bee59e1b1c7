"""Example 1, MapReduce on likes — three subscriptions chained through a topic:

  stage 1 (map)     firehose likes → {post, n: 1} → topic `likes`
  stage 2 (reduce)  topic `likes` → collector: per post per window, sum of n → state bucket `likes_per_window`,
                    key `<window start>/<post>`
  stage 3 (top 10)  topic `likes` → collector: one group, top 10 posts per window → webhook, printed here

Each closed window prints one line from stage 3; at the end every printed top 10 is checked against the counts
stage 2 wrote into state (read back through the API): the same posts with the same counts.

    bash examples/mapreduce/run.sh top-posts [--window-secs 60] [--lateness-secs 10] [--run-secs 150]
"""

import argparse
import sys
import threading
import time
import urllib.parse

from common import Receiver, Stack, emit


def state_counts(stack, start):
    """Post → count of one window, as stage 2 wrote it (every page of keys under `<start>/`)."""
    counts, after = {}, None
    while True:
        q = {"prefix": start + "/", "limit": "1000"}
        if after:
            q["after"] = after
        page = stack.call("GET", "/v1/state/likes_per_window/keys?" + urllib.parse.urlencode(q))
        for item in page["entries"]:
            counts[item["key"][len(start) + 1:]] = item["value"]
        after = page.get("next_after")
        if not after:
            return counts


def compare(stack, windows):
    """(windows checked, the ones where state and the printed top 10 disagree)."""
    mismatches = []
    for start, (total, top) in sorted(windows.items()):
        counts = state_counts(stack, start)
        from_state = [[p, n] for p, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]]
        if from_state != [list(t) for t in top] or sum(counts.values()) != total:
            mismatches.append({"window": start, "state": from_state, "printed": top,
                               "state_total": sum(counts.values()), "printed_total": total})
    return len(windows), mismatches


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window-secs", type=int, default=60)
    # Both collectors close a window when the newest event is this much past its end, or — their source quiet
    # for as long — by the wall clock. A pause upstream longer than this (a loaded machine) could let one stage
    # close a window by the clock before the other, and the two would then disagree on its last events.
    ap.add_argument("--lateness-secs", type=int, default=10)
    ap.add_argument("--run-secs", type=float, default=150)
    ap.add_argument("--rate", type=float, default=350)
    args = ap.parse_args()
    window = {"type": "tumbling", "size_s": args.window_secs, "lateness_s": args.lateness_secs}

    lock = threading.Lock()
    tops = {}  # window start -> (total likes, [(post, count)])

    def printer(batch):
        with lock:
            for e in batch["events"]:
                d = e["data"]
                top = [(t["value"], t["count"]) for t in d["top"]]
                if d["window"]["start"] not in tops:
                    emit({"stage": 3, "window": d["window"]["start"], "likes": d["likes"], "top10": top})
                tops.setdefault(d["window"]["start"], (d["likes"], top))
        return None

    stack = Stack(rate=args.rate)
    try:
        receiver = Receiver(printer)
        stack.call("POST", "/v1/topics", {"name": "likes", "max_age_secs": 3600, "max_bytes": 64 << 20})
        stack.call("POST", "/v1/subscriptions", {
            "name": "stage 1: likes -> {post, n}",
            # Commits only: as in Jetstream, a collection filter does not exclude identity and account events
            # (they have no collection), which have no post to count.
            "filter": {"kinds": ["commit"], "collections": ["app.bsky.feed.like"], "operations": ["create"]},
            "transform": "{post: commit.record.subject.uri, n: `1`}",
            "batching": {"max_events": 500, "max_wait_ms": 200},
            "delivery": {"type": "topic", "topic": "likes"},
        })
        stack.call("POST", "/v1/subscriptions", {
            "name": "stage 2: likes per post per window -> state",
            "source": {"topic": "likes"},
            "start": {"at": "retention_start"},
            "collect": {"key": "post", "window": window, "aggregations": {"likes": {"op": "sum", "field": "n"}}},
            "batching": {"max_events": 1000, "max_wait_ms": 200},
            "delivery": {"type": "kv", "bucket": "likes_per_window", "op": "put",
                         "key": "join('/', [window.start, key])", "value": "likes"},
        })
        s3 = stack.call("POST", "/v1/subscriptions", {
            "name": "stage 3: top 10 posts per window -> webhook",
            "source": {"topic": "likes"},
            "start": {"at": "retention_start"},
            "collect": {"key": "'all'", "window": window,
                        "aggregations": {"top": {"op": "top_k", "field": "post", "k": 10},
                                         "likes": {"op": "sum", "field": "n"}}},
            "delivery": {"type": "webhook", "url": receiver.url},
        })
        receiver.secret = s3["secrets"][0]["secret"]
        time.sleep(args.run_secs)
        with lock:
            windows = dict(tops)
        # Stage 2 wrote the same windows into state: its top 10 by count (ties by post) is what stage 3 printed.
        # (Stage 2 may write a window's last counts a moment after stage 3 printed it: look again for a while.)
        deadline = time.time() + 20
        while True:
            checked, mismatches = compare(stack, windows)
            if not mismatches or time.time() > deadline:
                break
            time.sleep(1)
        emit({"summary": True, "windows": len(windows), "checked": checked, "mismatches": mismatches,
              "match": checked > 0 and not mismatches})
        return 0 if checked > 0 and not mismatches else 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
