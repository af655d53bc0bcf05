"""Sealing throughput: inbox → normalised events → WORM Parquet segment + signed checkpoint.

Peer, same run, same rows, same SeaweedFS: raw pyarrow (Table.from_pylist + write_table with
zstd) and one PUT with Object Lock COMPLIANCE. Prints records/s for both and the ratio.

    python bench/seal.py [--n 30000]        (BENCH_DATABASE_URL=postgresql+psycopg://… for PostgreSQL)
"""

from __future__ import annotations

import argparse
import io
import time
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq

from _common import body, env_database_url, peak_rss_mb, signature, temp_archive
from archiver.records import ARROW_SCHEMA
from archiver.segments import decode_segment


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30_000)
    args = ap.parse_args()
    with temp_archive(env_database_url(), seal_batch_max=1_000_000) as archive:
        t0 = time.perf_counter()
        for i in range(args.n):
            data = body(i)
            archive.inbox.receive(data, signature(data))
        t_ingest = time.perf_counter() - t0

        t0 = time.perf_counter()
        normalizer = archive.normalizer()
        while normalizer.run_once(limit=2000):
            pass
        t_norm = time.perf_counter() - t0

        t0 = time.perf_counter()
        sealed = archive.sealer().seal_all()
        t_seal = time.perf_counter() - t0

        key = next(k for k in archive.store.list_keys("records/stream=106540352242922/"))
        rows, _ = decode_segment(archive.store.get(key))
        t0 = time.perf_counter()
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=ARROW_SCHEMA), buf, compression="zstd")
        archive.store.s3.put_object(Bucket=archive.store.bucket, Key="bench/peer.parquet", Body=buf.getvalue(),
                                    ObjectLockMode="COMPLIANCE",
                                    ObjectLockRetainUntilDate=datetime.now(UTC) + timedelta(days=1))
        t_peer = time.perf_counter() - t0

    print(f"database: {archive.settings.sql_url().split('://')[0]}, records sealed: {sealed} "
          f"({args.n} messages → message + change + envelope events)")
    print(f"  inbox receive (in-process)     : {args.n / t_ingest:10.0f} bodies/s")
    print(f"  normalise inbox → events       : {sealed / t_norm:10.0f} records/s")
    print(f"  seal events → WORM Parquet     : {sealed / t_seal:10.0f} records/s")
    print(f"  inbox → WORM (normalise + seal): {sealed / (t_norm + t_seal):10.0f} records/s")
    print(f"  peer: pyarrow write + one PUT  : {len(rows) / t_peer:10.0f} records/s")
    print(f"  ratio seal / peer              : {(sealed / t_seal) / (len(rows) / t_peer):10.2f}x")
    print(f"  peak RSS                       : {peak_rss_mb():10.0f} MB")


if __name__ == "__main__":
    main()
