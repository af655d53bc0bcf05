"""Six months of history for a busy number: 200,000 messages in chunks, kill -9 mid-import,
restart, and every message is sealed exactly once and verifies (issue 4, R-21)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from archiver.db import events, inbox, segments
from strongroom import payloads
from strongroom.runtime import Archive
from tests.conftest import sign, subprocess_env

pytestmark = pytest.mark.slow
MESSAGES, PER_CHUNK = 200_000, 1_000


def _worker(archive: Archive, log: Path) -> subprocess.Popen[bytes]:
    env = subprocess_env(archive.settings) | {"STRONGROOM_SEAL_INTERVAL_SECONDS": "0.2"}
    return subprocess.Popen([sys.executable, "-m", "strongroom", "worker"], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _wait(what: str, check, timeout: float = 900.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _count(archive: Archive, query: sa.Select) -> int:  # type: ignore[type-arg]
    with archive.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def test_a_200k_message_history_import_survives_kill_9(archive: Archive, tmp_path: Path) -> None:
    bodies = payloads.busy_history(MESSAGES, PER_CHUNK)
    assert len(bodies) == MESSAGES // PER_CHUNK
    for i in range(0, len(bodies), 25):
        archive.inbox.commit([archive.inbox.prepare(b, sign(b)) for b in bodies[i:i + 25]])

    log = tmp_path / "worker.log"
    first = _worker(archive, log)
    pending = sa.select(sa.func.count()).where(inbox.c.state == "pending")
    sealed = sa.select(sa.func.count()).select_from(segments)
    _wait("part of the import to be sealed", lambda: _count(archive, sealed) > 0)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert _count(archive, pending) > 0, "the kill must land mid-import"

    second = _worker(archive, log)
    unsealed = sa.select(sa.func.count()).where(events.c.segment_id.is_(None))
    _wait("the import to finish", lambda: _count(archive, pending) == 0 and _count(archive, unsealed) == 0
          and _count(archive, sa.select(sa.func.count()).select_from(events)) > MESSAGES)
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 0, log.read_text()[-3000:]

    history = sa.select(sa.func.count()).where(events.c.kind == "message", events.c.origin == "history")
    assert _count(archive, history) == MESSAGES
    # in the sealed Parquet: each message exactly once, with its provenance
    res = archive.query_engine().query(
        "SELECT count(*), count(DISTINCT wamid), min(origin), max(origin) FROM records "
        f"WHERE kind = 'message' AND stream = '{payloads.PNID}'")
    assert tuple(res.rows[0]) == (MESSAGES, MESSAGES, "history", "history")
    assert _count(archive, sa.select(sa.func.count()).select_from(segments)) >= 2
    report = archive.verifier().verify(expected_sizes=archive.expected_sizes())
    assert report.ok, [str(f) for f in report.failures]
