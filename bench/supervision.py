"""Supervision: flagging throughput with the default policy against the raw ingest rate, and the
default lexicons' recall and precision on the labelled corpus.

N messages (the labelled corpus's texts, cycled, so roughly 29% of them hit a lexicon) arrive as
signed webhooks; the peer is the archive's own ingest in the same run: normalising and sealing
them (`process_pending`: decode, encrypt, hash-chain, Parquet, WORM upload). Then the supervision
follower (`Supervision.run`) flags and samples them all with the default policy (seven lexicons,
64 terms, exceptions, a 1% sample): the ratio says whether review keeps up with arrival.

    python bench/supervision.py [--messages 20000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import env_database_url, signature, temp_archive  # noqa: E402

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "supervision" / "corpus.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20_000)
    args = ap.parse_args()
    from review.lexicon import default_lexicons, match
    from review.supervision import DEFAULT_POLICY
    from strongroom import payloads as p

    corpus = [json.loads(line) for line in CORPUS.read_text().splitlines()]
    lexicons = default_lexicons()
    found = {r["id"]: bool(match(lexicons, r["text"])) for r in corpus}
    tp = sum(1 for r in corpus if r["expect"] and found[r["id"]])
    fp = sum(1 for r in corpus if not r["expect"] and found[r["id"]])
    fn = sum(1 for r in corpus if r["expect"] and not found[r["id"]])
    print(f"labelled corpus: {len(corpus)} messages, {tp + fn} a reviewer should see: recall {tp / (tp + fn):.3f}, "
          f"precision {tp / (tp + fp):.3f} (goals: >= 0.95, >= 0.5)")

    with temp_archive(env_database_url()) as archive:
        start = int(time.time()) - 86400
        for i in range(args.messages):
            r = corpus[i % len(corpus)]
            client = f"4477009{i % 2000:05d}"
            body = (p.inbound(p.text(f"wamid.BENCH.{i}", client, start + i, r["text"])) if r["direction"] == "inbound"
                    else p.echo(f"wamid.BENCH.{i}", client, start + i, r["text"]))
            archive.inbox.receive(body, signature(body))
        t = time.perf_counter()
        archive.process_pending()
        ingest = time.perf_counter() - t
        review = archive.supervision()
        review.store_policy("default", DEFAULT_POLICY, "bench")
        t = time.perf_counter()
        items = review.run()
        flagging = time.perf_counter() - t
    print(f"ingest (normalise + seal, the peer): {args.messages / ingest:,.0f} messages/s ({ingest:.1f} s)")
    print(f"flagging + sampling, default policy: {args.messages / flagging:,.0f} messages/s ({flagging:.1f} s), "
          f"{items:,} items")
    print(f"flagging runs at {ingest / flagging:.2f}x the ingest rate")


if __name__ == "__main__":
    main()
