"""The review queue page at 100k open items: the console's ``GET /console/review`` (each view: open
first-level items, a deep page, overdue, escalated, mine) against its API twin
``GET /api/v1/review/items`` with the same filters, in the same run, server time in-process.

Items are written straight into ``review_items`` (the queue lists items, never message text, so
no messages are needed), spread over 20 numbers, 1% escalated, 5% overdue, 2% held by the bench's
reviewer.

    python bench/review_queue.py [--items 100000] [--repeat 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import env_database_url, percentile, signed_in, temp_archive  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=40)
    args = ap.parse_args()
    import sqlalchemy as sa
    from ulid import ULID

    from review.supervision import review_items

    with temp_archive(env_database_url(), login_rate_per_minute=1000, api_rate_per_minute=100_000) as archive:
        client, api, _csrf = signed_in(archive, "bench", "compliance")
        now = datetime.now(UTC)
        hits = json.dumps([{"lexicon": "guarantees", "term": "guarante* w/6 (return* OR profit*)"}])
        t0 = time.perf_counter()
        rows = []
        for i in range(args.items):
            made = now - timedelta(days=20) + timedelta(seconds=i * 10)
            rows.append({"id": str(ULID.from_datetime(made)), "policy": "default", "policy_version": 1,
                         "event_id": i + 1, "stream": f"1065403522429{i % 20:02d}", "natural_key": f"wamid.Q{i}",
                         "tenant": "102290129340398", "conversation": f"c{i % 5000}", "event_time": made,
                         "reason": "flag" if i % 3 else "sample", "hits": hits if i % 3 else "[]",
                         "queue": "first-level", "state": "open", "level": 2 if i % 100 == 0 else 1,
                         "assignee": "bench" if i % 50 == 1 else None, "created_at": made,
                         "due_at": made + timedelta(days=1 if i % 20 == 0 else 30)})
            if len(rows) == 10_000:
                with archive.engine.begin() as conn:
                    conn.execute(review_items.insert(), rows)
                rows = []
        if rows:
            with archive.engine.begin() as conn:
                conn.execute(review_items.insert(), rows)
        print(f"{args.items:,} open review items written in {time.perf_counter() - t0:.1f} s")
        with archive.engine.connect() as conn:
            middle = conn.execute(sa.select(review_items.c.id).order_by(review_items.c.id)
                                  .offset(args.items // 2).limit(1)).scalar()
        views = {"open": {"level": 1}, "deep page": {"level": 1, "after": middle}, "overdue": {"overdue": "true"},
                 "escalated": {"level": 2}, "mine": {"mine": "true"}}
        console_view = {"open": "open", "deep page": "open", "overdue": "overdue", "escalated": "escalated",
                        "mine": "mine"}

        def timed(get: object) -> list[float]:
            out = []
            for i in range(args.repeat):
                name = list(views)[i % len(views)]
                t = time.perf_counter()
                resp = get(name)  # type: ignore[operator]
                out.append((time.perf_counter() - t) * 1000)
                assert resp.status_code == 200, resp.text[:300]
            return out

        page = timed(lambda name: client.get("/console/review", params={
            "view": console_view[name], **({"after": middle} if name == "deep page" else {})}))
        peer = timed(lambda name: client.get("/api/v1/review/items", params=views[name], headers=api))
    print(f"queue page (GET /console/review)        p50 {statistics.median(page):7.1f} ms   p95 {percentile(page, 0.95):7.1f} ms")
    print(f"queue API (GET /api/v1/review/items)    p50 {statistics.median(peer):7.1f} ms   p95 {percentile(peer, 0.95):7.1f} ms")
    print(f"queue page: p95 {percentile(page, 0.95) / percentile(peer, 0.95):.2f}x its API twin at {args.items:,} open items "
          "(goal: page p95 < 300 ms)")


if __name__ == "__main__":
    main()
