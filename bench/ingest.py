"""Webhook ingest: events/s and latency to a *durable* acknowledgement.

Targets, same run, same load: (1) `strongroom serve` on the embedded default (SQLite +
SeaweedFS, ingest worker running) — every 200 means the body is committed; (2) the peer, a
bare FastAPI endpoint under uvicorn that does no I/O. The load generator is a separate
process speaking keep-alive HTTP/1.1 over loopback.

    python bench/ingest.py [--n 6000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import APP_SECRET, body, signature
from strongroom.embedded import free_port

ROOT = Path(__file__).resolve().parents[1]


def _request(data: bytes) -> bytes:
    head = (f"POST /webhooks/whatsapp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"X-Hub-Signature-256: {signature(data)}\r\nContent-Length: {len(data)}\r\n\r\n")
    return head.encode() + data


async def _client(port: int, requests: list[bytes], latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for req in requests:
        t = time.perf_counter()
        writer.write(req)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"content-length: *(\d+)", head, re.I)[1])  # type: ignore[index]
        await reader.readexactly(length)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode(errors="replace"))
        latencies.append(time.perf_counter() - t)
    writer.close()


async def _load(port: int, requests: list[bytes], concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    share = [requests[i::concurrency] for i in range(concurrency)]
    t = time.perf_counter()
    await asyncio.gather(*(_client(port, s, latencies) for s in share))
    return time.perf_counter() - t, latencies


def _wait(port: int, path: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1)
            return
        except Exception:
            time.sleep(0.3)
    raise RuntimeError(f"nothing answered on port {port}")


def _measure(name: str, port: int, offset: int, n: int, concurrency: int) -> dict[str, float]:
    warm = [_request(body(offset + i)) for i in range(300)]
    asyncio.run(_load(port, warm, concurrency))
    reqs = [_request(body(offset + 1000 + i)) for i in range(n)]
    elapsed, lat = asyncio.run(_load(port, reqs, concurrency))
    q = statistics.quantiles(lat, n=100)
    res = {"rps": n / elapsed, "p50": q[49] * 1000, "p99": q[98] * 1000}
    print(f"  {name:44s}: {res['rps']:8.0f} events/s  p50 {res['p50']:6.1f} ms  p99 {res['p99']:6.1f} ms")
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=6000)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="strongroom-ingest-") as tmp:
        sr_port, bare_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
        env.update(STRONGROOM_DATA_DIR=tmp, STRONGROOM_APP_SECRET=APP_SECRET, STRONGROOM_VERIFY_TOKEN="bench",
                   STRONGROOM_PORT=str(sr_port), STRONGROOM_EMBEDDED_S3_PORT=str(free_port()),
                   STRONGROOM_RETENTION_DAYS="1", STRONGROOM_LOG_LEVEL="WARNING",
                   STRONGROOM_SEAL_INTERVAL_SECONDS=os.environ.get("BENCH_SEAL_INTERVAL", "1"))
        service = subprocess.Popen([py, "-m", "strongroom", "serve"], env=env, cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bare = subprocess.Popen([py, "-m", "uvicorn", "bare_app:app", "--port", str(bare_port), "--no-access-log",
                                 "--log-level", "warning"], cwd=Path(__file__).parent)
        try:
            _wait(sr_port, "/healthz")
            _wait(bare_port, "/docs-none")
        except RuntimeError:
            pass
        try:
            print(f"{args.n} signed webhooks, {args.concurrency} keep-alive connections, loopback")
            peer = _measure("peer: bare FastAPI endpoint, no I/O", bare_port, 0, args.n, args.concurrency)
            ours = _measure("strongroom: HMAC + AES-GCM + durable commit", sr_port, 10_000_000, args.n,
                            args.concurrency)
            print(f"  ratio strongroom / peer: {ours['rps'] / peer['rps']:.2f}x throughput, "
                  f"p99 {ours['p99'] / peer['p99']:.2f}x")
        finally:
            for p in (service, bare):
                p.send_signal(2)
            for p in (service, bare):
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()
