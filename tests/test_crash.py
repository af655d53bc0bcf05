"""kill -9 at every step boundary of the write path: nothing lost, nothing duplicated."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from archiver.db import events, inbox
from archiver.failpoints import NORMALIZER_POINTS, SEALER_POINTS
from archiver.segments import decode_segment
from strongroom.runtime import Archive
from tests.conftest import sign, subprocess_env

pytestmark = pytest.mark.slow


def _seal(archive: Archive, failpoint: str | None) -> subprocess.CompletedProcess[str]:
    env = subprocess_env(archive.settings)
    if failpoint:
        env["STRONGROOM_FAILPOINT"] = failpoint
    return subprocess.run([sys.executable, "-m", "strongroom", "seal"], env=env, capture_output=True, text=True,
                          timeout=180)


def test_kill_9_at_every_step_then_restart_seals_each_event_exactly_once(
    archive: Archive, webhook_body: Callable[[str], bytes]
) -> None:
    points = NORMALIZER_POINTS + SEALER_POINTS
    assert len(points) >= 5
    for n, point in enumerate(points):
        for i in range(4):  # fresh work for this round
            body = webhook_body("multi_entry")
            for old in (b"wamid.multi1", b"wamid.out9", b"wamid.img1"):
                body = body.replace(old, old + f".{n}.{i}".encode())
            archive.inbox.receive(body, sign(body))
        crashed = _seal(archive, point)
        assert crashed.returncode == -signal.SIGKILL, f"{point} did not crash: {crashed.stderr[-2000:]}"
        recovered = _seal(archive, None)
        assert recovered.returncode == 0, f"restart after {point} failed: {recovered.stderr[-3000:]}"

        with archive.engine.connect() as conn:
            unsealed = conn.execute(sa.select(sa.func.count()).where(events.c.segment_id.is_(None))).scalar_one()
            pending = conn.execute(sa.select(sa.func.count()).where(inbox.c.state != "sealed")).scalar_one()
            total = conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one()
        assert (unsealed, pending) == (0, 0), f"after {point}: {unsealed} unsealed events, {pending} bodies"

        stored = []
        for key in archive.store.list_keys("records/"):
            stored += [(r["stream"], r["seq"], r["natural_key"]) for r in decode_segment(archive.store.get(key))[0]]
        assert len(stored) == total, f"after {point}: {len(stored)} records stored for {total} events"
        assert len({(s, k) for s, _, k in stored}) == total, f"after {point}: a record was sealed twice"
        assert len({(s, q) for s, q, _ in stored}) == total

        report = archive.verifier().verify(expected_sizes=archive.expected_sizes())
        assert report.ok, f"after {point}: " + "; ".join(str(f) for f in report.failures)


def test_a_large_orphan_segment_is_adopted(archive: Archive, webhook_body: Callable[[str], bytes]) -> None:
    """An orphan bigger than SQLite's bound-parameter limit (32,766) is matched in chunks."""
    template = webhook_body("text_bsuid")
    rows = []
    for i in range(12_000):
        body = template.replace(b"wamid.xyzxyz", f"wamid.big{i}".encode())
        rows.append(archive.inbox.prepare(body, sign(body)))
    archive.inbox.commit(rows)
    normalizer = archive.normalizer()
    while normalizer.run_once(limit=20_000):  # everything pending at once: one big segment
        pass
    assert _seal(archive, "sealer.after_put").returncode == -signal.SIGKILL
    recovered = _seal(archive, None)
    assert recovered.returncode == 0, recovered.stderr[-3000:]
    # per body: message, raw change, envelope; plus one identity record for the one sender
    assert archive.expected_sizes()["1122334455667"] == 36_001
    assert len(list(archive.store.list_keys("records/stream=1122334455667/"))) == 1  # adopted, not resealed
    report = archive.verifier().verify(expected_sizes=archive.expected_sizes())
    assert report.ok, "; ".join(str(f) for f in report.failures)
