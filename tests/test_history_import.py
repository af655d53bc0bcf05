"""A busy number's history import, killed with SIGKILL mid-import (twice) and restarted: every
message is sealed exactly once and verifies (issue 4, R-21).

The suite runs 20,000 messages in small normalising rounds (many segments, two kills mid-import);
`bench/history_kill9.py` runs the same scenario at full size (200,000 messages, six months)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from archiver.db import events, inbox, segments
from strongroom import payloads
from strongroom.runtime import Archive
from tests.conftest import sign, subprocess_env

pytestmark = pytest.mark.slow


def _count(archive: Archive, query: sa.Select[Any]) -> int:
    with archive.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def _wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def import_with_kills(archive: Archive, env: dict[str, str], signer: Callable[[bytes], str], log: Path,
                      messages: int, per_chunk: int, kill_at_segments: tuple[int, ...],
                      timeout: float = 1800.0) -> dict[str, int]:
    """Receive `messages` of history, run a worker, SIGKILL it once `kill_at_segments[i]` segments
    are sealed (asserting the import is unfinished each time), restart, and check the outcome."""
    bodies = payloads.busy_history(messages, per_chunk)
    for i in range(0, len(bodies), 25):
        archive.inbox.commit([archive.inbox.prepare(b, signer(b)) for b in bodies[i:i + 25]])

    def worker() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "strongroom", "worker"], env=env,
                                stdout=log.open("ab"), stderr=subprocess.STDOUT)

    pending = sa.select(sa.func.count()).where(inbox.c.state == "pending")
    sealed = sa.select(sa.func.count()).select_from(segments)
    for at in kill_at_segments:
        w = worker()
        _wait(f"{at} segments to be sealed", lambda at=at: _count(archive, sealed) >= at, timeout)
        w.send_signal(signal.SIGKILL)
        w.wait()
        assert _count(archive, pending) > 0, f"the kill at {at} segments must land mid-import"
    last = worker()
    unsealed = sa.select(sa.func.count()).where(events.c.segment_id.is_(None))
    _wait("the import to finish", lambda: _count(archive, pending) == 0 and _count(archive, unsealed) == 0
          and _count(archive, sa.select(sa.func.count()).select_from(events)) > messages, timeout)
    last.send_signal(signal.SIGTERM)
    assert last.wait(timeout=60) == 0, log.read_text()[-3000:]

    history = sa.select(sa.func.count()).where(events.c.kind == "message", events.c.origin == "history")
    assert _count(archive, history) == messages
    # in the sealed Parquet: each message exactly once, with its provenance
    res = archive.query_engine().query(
        "SELECT count(*), count(DISTINCT wamid), min(origin), max(origin) FROM records "
        f"WHERE kind = 'message' AND stream = '{payloads.PNID}'")
    assert tuple(res.rows[0]) == (messages, messages, "history", "history")
    n_segments = _count(archive, sealed)
    assert n_segments > max(kill_at_segments, default=0)
    report = archive.verifier().verify(expected_sizes=archive.expected_sizes())
    assert report.ok, [str(f) for f in report.failures]
    return {"messages": messages, "segments": n_segments, "kills": len(kill_at_segments)}


def test_a_history_import_survives_two_kill_9s(archive: Archive, tmp_path: Path) -> None:
    env = subprocess_env(archive.settings) | {"STRONGROOM_SEAL_INTERVAL_SECONDS": "0.2",
                                              "STRONGROOM_NORMALIZE_BATCH_BYTES": str(200_000)}
    # 40 chunks of 500 messages (~80 kB each): two or three chunks per round, a segment per round
    outcome = import_with_kills(archive, env, sign, tmp_path / "worker.log", 20_000, 500, (1, 5), timeout=600)
    assert outcome["segments"] >= 8
