"""KEK rotation (issue 16, item 2): every data key re-wrapped under a new KEK, resumable after
SIGKILL, the old KEK destroyed, and a database backup from before the rotation no longer opens a
subject shredded before it."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from archiver.crypto import DecryptionError
from archiver.db import data_keys, events
from archiver.errors import KeyDestroyedError
from strongroom import payloads as p
from strongroom.runtime import Archive, open_archive
from strongroom.settings import Settings
from tests.conftest import ingest, subprocess_env

T = int(datetime.now(UTC).timestamp()) - 3600
PEOPLE = [f"1650555{i:04d}" for i in range(40)]


def _kek_ids(a: Archive) -> dict[str | None, int]:
    with a.engine.connect() as conn:
        rows = conn.execute(sa.select(data_keys.c.kek_id, sa.func.count()).where(data_keys.c.wrapped.is_not(None))
                            .group_by(data_keys.c.kek_id)).all()
    return {k: n for k, n in rows}


def _message(a: Archive, wamid: str) -> object:
    with a.engine.connect() as conn:
        return conn.execute(sa.select(events).where(events.c.wamid == wamid, events.c.kind == "message")).one()


def _rotate(settings: Settings, *extra: str, failpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    env = subprocess_env(settings) | ({"STRONGROOM_FAILPOINT": failpoint} if failpoint else {})
    return subprocess.run([sys.executable, "-m", "strongroom", "keys", "rotate-kek", *extra], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("sql_url", ["sqlite"], indirect=True)
def test_kek_rotation_survives_sigkill_and_makes_shredding_survive_backups(
        make_settings: Callable[..., Settings], sql_url: str, tmp_path: Path) -> None:
    settings = make_settings()
    a = open_archive(settings)
    db_file = sql_url.removeprefix("sqlite:///")
    backup = tmp_path / "backup.db"
    try:
        a.schedules.store({"default_days": 1}, "test", datetime.now(UTC))  # nothing statutory: erasure allowed
        ingest(a, *[p.inbound(p.text(f"wamid.k{i}", phone, T + i, f"message {i}")) for i, phone in enumerate(PEOPLE)])
        a.process_pending()
        kek_file = settings.key_path("kek")
        original = kek_file.read_bytes()
        [old_id] = list(_kek_ids(a))
        with sqlite3.connect(db_file) as src, sqlite3.connect(backup) as dst:
            src.backup(dst)  # last night's backup: the soon-erased subject's key in it, under the old KEK
        assert a.erasure().request("dpo:dan", phone=PEOPLE[0]).outcome == "granted"
        a.process_pending()
        total = sum(_kek_ids(a).values())
        assert total >= len(PEOPLE)

        killed = _rotate(settings, "--batch", "5", failpoint="kek.after_batch")
        assert killed.returncode == -9, killed.stderr
        mid = _kek_ids(a)
        assert kek_file.with_name(kek_file.name + ".next").exists() and len(mid) == 2 and mid[old_id] < total
        # meanwhile every record still opens (rows under either version), in this running process too
        assert a.keyring.open_record(_message(a, "wamid.k7")) and a.keyring.open_record(_message(a, "wamid.k39"))

        done = _rotate(settings, "--batch", "5")
        assert done.returncode == 0, done.stderr
        assert "a rotation left under way was finished" in done.stdout
        after = _kek_ids(a)
        assert list(after) != [old_id] and sum(after.values()) == total and len(after) == 1
        assert kek_file.read_bytes() != original and not kek_file.with_name(kek_file.name + ".next").exists()
    finally:
        a.close()

    fresh = open_archive(settings)  # no cached keys: everything from the database and the new KEK
    try:
        for i in range(1, len(PEOPLE)):
            assert fresh.keyring.open_record(_message(fresh, f"wamid.k{i}")) == \
                fresh.keyring.open_record(_message(fresh, f"wamid.k{i}"))
        with pytest.raises(KeyDestroyedError):
            fresh.keyring.open_record(_message(fresh, "wamid.k0"))
        report = fresh.verifier().verify(fresh.expected_sizes())
        assert report.ok, [str(f) for f in report.failures]
        trail = [r.type for r in fresh.engine.connect().execute(
            sa.select(events.c.type).where(events.c.stream == "audit", events.c.type.like("keys.rotate_kek%")))]
        assert trail.count("keys.rotate_kek.started") == 2 and trail.count("keys.rotate_kek.finished") == 1
    finally:
        fresh.close()

    # the backup restored: the erased subject's key is in it, wrapped by a KEK that no longer exists
    with sqlite3.connect(backup) as src, sqlite3.connect(db_file) as dst:
        src.backup(dst)
    restored = open_archive(settings)
    try:
        with pytest.raises(DecryptionError, match="no longer holds"):
            restored.keyring.open_record(_message(restored, "wamid.k0"))
    finally:
        restored.close()


@pytest.mark.parametrize("sql_url", ["sqlite"], indirect=True)
def test_the_worker_rotates_the_kek_when_it_is_older_than_the_setting(make_settings: Callable[..., Settings]) -> None:
    from strongroom.runtime import Worker

    a = open_archive(make_settings(kek_rotation_days=1e-9))
    try:
        ingest(a, p.inbound(p.text("wamid.w1", PEOPLE[1], T, "hello")))
        a.process_pending()
        [before] = list(_kek_ids(a))
        Worker(a, 1.0).kek_rotation_if_due()
        [after] = list(_kek_ids(a))
        assert after != before and a.keyring.open_record(_message(a, "wamid.w1"))
        a.settings.kek_rotation_days = 3650
        Worker(a, 1.0).kek_rotation_if_due()  # not due: nothing changes
        assert list(_kek_ids(a)) == [after]
    finally:
        a.close()
