"""Verification throughput: `Verifier` over every segment and checkpoint in SeaweedFS.

Peer, same run, same objects: GET every object and SHA-256 its bytes with hashlib — the
floor for "re-read and hash everything". Prints records/s for both and the ratio.

    python bench/verify.py [--n 20000]
"""

from __future__ import annotations

import argparse
import hashlib
import time

from _common import body, env_database_url, signature, temp_archive


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--segments", type=int, default=10)
    args = ap.parse_args()
    with temp_archive(env_database_url()) as archive:
        per = args.n // args.segments
        for s in range(args.segments):
            rows = [archive.inbox.prepare(body(s * per + i), signature(body(s * per + i))) for i in range(per)]
            archive.inbox.commit(rows)
            archive.process_pending()
        keys = list(archive.store.list_keys(""))
        records = sum(archive.expected_sizes().values())

        t0 = time.perf_counter()
        total = 0
        for key in keys:
            data = archive.store.get(key)
            hashlib.sha256(data).digest()
            total += len(data)
        t_peer = time.perf_counter() - t0

        t0 = time.perf_counter()
        report = archive.verifier().verify(expected_sizes=archive.expected_sizes())
        t_ours = time.perf_counter() - t0
        assert report.ok, [str(f) for f in report.failures]

    print(f"{records} records in {len(keys)} objects ({total / 1e6:.1f} MB)")
    print(f"  verify (hash, chain, Merkle, signatures, locks): {records / t_ours:10.0f} records/s")
    print(f"  peer: GET + hashlib.sha256 of the same objects : {records / t_peer:10.0f} records/s")
    print(f"  ratio verify / peer                            : {t_peer / t_ours:10.2f}x")


if __name__ == "__main__":
    main()
