"""History import: a busy number's six months (200,000 messages in 1,000-message chunks) from
inbox to sealed WORM Parquet, with the importer's peak RSS.

Peer, same run, same bodies, same SeaweedFS: raw pyarrow — json.loads every chunk, flatten the
messages to rows, one zstd Parquet write and one PUT (no encryption, no chain, no SQL).

    python bench/history_import.py [--messages 200000] [--per-chunk 1000]
    (BENCH_DATABASE_URL=postgresql+psycopg://… for PostgreSQL)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq

from _common import PROCESS_PENDING, REPO, child_env, commit_history, env_database_url, peak_rss_mb, temp_archive
from strongroom.payloads import busy_history


def peer(bodies: list[bytes], archive) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    rows = []
    for b in bodies:
        doc = json.loads(b)
        for entry in doc["entry"]:
            for change in entry["changes"]:
                for chunk in change["value"].get("history", []):
                    for thread in chunk.get("threads", []):
                        for m in thread["messages"]:
                            rows.append({"thread": thread["id"], "wamid": m["id"], "from": m["from"],
                                         "timestamp": int(m["timestamp"]), "type": m["type"],
                                         "message": json.dumps(m)})
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf, compression="zstd")
    archive.store.s3.put_object(Bucket=archive.store.bucket, Key="bench/history-peer.parquet", Body=buf.getvalue())
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--per-chunk", type=int, default=1_000)
    args = ap.parse_args()
    with temp_archive(env_database_url()) as archive:
        commit_history(child_env(archive), args.messages, args.per_chunk)
        launcher_mb = peak_rss_mb()
        t0 = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", PROCESS_PENDING], env=child_env(archive), cwd=REPO,
                                 stdout=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        elapsed = time.perf_counter() - t0
        assert os.waitstatus_to_exitcode(status) == 0, "import failed"
        sealed = int(child.stdout.read().strip())  # type: ignore[union-attr]
        res = archive.query_engine().query("SELECT count(*) FROM records WHERE kind = 'message' AND origin = 'history'")
        imported = res.rows[0][0]
        bodies = busy_history(args.messages, args.per_chunk)  # the same bodies again, for the peer
        size = sum(len(b) for b in bodies)
        t_peer = peer(bodies, archive)
    print(f"database: {archive.settings.sql_url().split('://')[0]}; {len(bodies)} chunks, {size / 1e6:.1f} MB of "
          f"webhook bodies; {imported} history messages sealed ({sealed} records incl. raw changes, envelopes, "
          "identities, chunk markers)")
    print(f"  strongroom import (inbox → sealed WORM) : {imported / elapsed:10.0f} messages/s ({elapsed:.1f} s)")
    print(f"  importer peak RSS                       : {usage.ru_maxrss / 1024:10.0f} MB "
          f"(its launcher's own peak: {launcher_mb:.0f} MB)")
    print(f"  peer: json.loads + pyarrow + one PUT    : {imported / t_peer:10.0f} messages/s ({t_peer:.1f} s)")
    print(f"  ratio                                   : {t_peer / elapsed:10.2f}x")


if __name__ == "__main__":
    main()
