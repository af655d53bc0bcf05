"""The full-size crash test of a history import: six months of a busy number (200,000 messages in
1,000-message chunks), the worker killed with SIGKILL mid-import three times, restarted, and every
message sealed exactly once and verifying. `make test` runs the same scenario at 20,000 messages
(tests/test_history_import.py); this is the size the issue asked about.

    python bench/history_kill9.py [--messages 200000] [--per-chunk 1000] [--batch-bytes 4194304]
    (BENCH_DATABASE_URL=postgresql+psycopg://… for PostgreSQL)

Peer: the same import without kills (one worker from start to end), in the same run, so the
ratio says what the crashes and restarts cost.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import REPO, child_env, env_database_url, signature, temp_archive
from tests.test_history_import import import_with_kills  # noqa: E402  (REPO is on sys.path now)


def run(messages: int, per_chunk: int, batch: int, kills: tuple[int, ...]) -> tuple[float, dict[str, int]]:
    with temp_archive(env_database_url()) as archive, tempfile.TemporaryDirectory() as tmp:
        env = child_env(archive) | {"STRONGROOM_SEAL_INTERVAL_SECONDS": "0.2",
                                    "STRONGROOM_NORMALIZE_BATCH_BYTES": str(batch)}
        t0 = time.perf_counter()
        outcome = import_with_kills(archive, env, signature, Path(tmp) / "worker.log", messages, per_chunk, kills)
        return time.perf_counter() - t0, outcome


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--per-chunk", type=int, default=1_000)
    ap.add_argument("--batch-bytes", type=int, default=4 * 1024 * 1024, help="bodies normalised per round")
    args = ap.parse_args()
    assert REPO.exists()
    killed, outcome = run(args.messages, args.per_chunk, args.batch_bytes, (1, 3, 5))
    whole, _ = run(args.messages, args.per_chunk, args.batch_bytes, ())
    print(f"history import of {outcome['messages']:,} messages, {outcome['kills']} SIGKILLs mid-import: "
          f"{killed:.1f} s, {outcome['segments']} segments, every message sealed once, verifies")
    print(f"peer (same import, no kills): {whole:.1f} s; ratio {whole / killed:.2f}x")


if __name__ == "__main__":
    main()
