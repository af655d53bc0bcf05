"""Media pipeline: attachments fetched from the (local) Graph API into WORM storage.

strongroom: GET /{media-id} → download → check Meta's sha256 → encrypt per subject → PUT with
Object Lock COMPLIANCE → sealed link record, 4 concurrent fetches.
Peer, same run, same files, same stand-in and SeaweedFS: a bare loop (4 threads) doing
GET /{media-id} → download → plain PUT.

    python bench/media.py [--files 200] [--kib 256]
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from _common import signature, temp_archive
from strongroom import payloads
from tests.graph_standin import GraphStandIn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--kib", type=int, default=256)
    args = ap.parse_args()
    graph = GraphStandIn().start()
    ids = [f"bench-media-{i}" for i in range(args.files)]
    files = {i: graph.add(i, os.urandom(args.kib * 1024)) for i in ids}
    total_mb = args.files * args.kib / 1024
    try:
        with temp_archive(graph_base_url=graph.base_url, graph_token=graph.token, media_concurrency=4) as archive:
            for n, media_id in enumerate(ids):
                body = payloads.inbound(payloads.image(f"wamid.bm{n}", f"1650555{n:04d}", 1_764_000_000 + n,
                                                       media_id, files[media_id].sha256))
                archive.inbox.receive(body, signature(body))
            normalizer = archive.normalizer()
            while normalizer.run_once():
                pass
            fetcher = archive.media_fetcher()
            t0 = time.perf_counter()
            while fetcher.run_once():
                pass
            t_ours = time.perf_counter() - t0
            fetcher.close()
            stored = len(list(archive.store.list_keys("media/")))
            assert stored == args.files, f"only {stored} of {args.files} stored"

            client = httpx.Client(headers={"Authorization": f"Bearer {graph.token}"})
            s3, bucket = archive.store.s3, archive.store.bucket

            def bare(media_id: str) -> None:
                url = client.get(f"{graph.base_url}/{media_id}").json()["url"]
                data = client.get(url).content
                s3.put_object(Bucket=bucket, Key=f"bench/media/{media_id}", Body=data)

            t0 = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(bare, ids))
            t_peer = time.perf_counter() - t0
            client.close()
    finally:
        graph.stop()
    print(f"{args.files} files of {args.kib} KiB ({total_mb:.0f} MB), 4 concurrent fetches, local Graph stand-in")
    print(f"  strongroom (fetch, check, encrypt, WORM PUT, link) : {args.files / t_ours:8.1f} files/s "
          f"{total_mb / t_ours:8.1f} MB/s")
    print(f"  peer: bare GET info + download + PUT              : {args.files / t_peer:8.1f} files/s "
          f"{total_mb / t_peer:8.1f} MB/s")
    print(f"  ratio                                             : {t_peer / t_ours:8.2f}x")


if __name__ == "__main__":
    main()
