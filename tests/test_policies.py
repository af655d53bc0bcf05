"""Retention schedules, legal holds, retention runs and erasure — on SeaweedFS (real Object Lock)
and on SQLite and PostgreSQL (R-4, R-5, R-6, R-33, R-34, R-37)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from archiver.db import events, segments
from archiver.errors import AccessDeniedError, InvalidInput, KeyDestroyedError
from archiver.sqlutil import Row
from policies.disposition import load_certificates, open_document
from policies.holds import HoldError, Scope
from policies.retention import RetentionSchedule, add_years
from strongroom import payloads as p
from strongroom.cli import app
from strongroom.runtime import Archive, open_archive
from strongroom.settings import Settings
from tests.conftest import ingest, open_record, subprocess_env

ALICE, BOB = "16505550101", "16505550202"
T = 1_764_000_000


def _segments(archive: Archive) -> list[Row]:
    with archive.engine.connect() as conn:
        return conn.execute(sa.select(segments).where(segments.c.stream == p.PNID).order_by(segments.c.first_seq)).all()


def _message(archive: Archive, wamid: str) -> Row:
    with archive.engine.connect() as conn:
        return conn.execute(sa.select(events).where(events.c.wamid == wamid, events.c.kind == "message")).one()


def _verify(archive: Archive) -> None:
    report = archive.verifier().verify(expected_sizes=archive.expected_sizes())
    assert report.ok, [str(f) for f in report.failures]


# -- schedules --------------------------------------------------------------------------------

def test_the_longest_statutory_period_wins_and_gdpr_caps_only_the_rest() -> None:
    at = datetime(2026, 2, 28, 12, tzinfo=UTC)
    s = RetentionSchedule(version=3, numbers={"111": ("SEC-BD", "MiFID")}, tenants={"waba1": ("HIPAA",)},
                          classes={"audit": ("FINRA",)}, gdpr_max_days=400)
    d = s.decide("111", None, at)
    assert (d.governing, d.retain_until.year, d.label) == ("MiFID", 2031, "v3:MiFID")  # 5 y beats 3 y
    assert s.decide("111", "waba1", at).governing == "HIPAA"  # 6 y from the tenant's tag
    assert s.decide("audit", None, at).governing == "FINRA"
    gdpr = s.decide("222", None, at)  # no statutory minimum: GDPR's maximum applies
    assert (gdpr.governing, (gdpr.retain_until - at).days) == ("GDPR-max", 400)
    assert add_years(datetime(2028, 2, 29, tzinfo=UTC), 1) == datetime(2029, 3, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="unknown retention tag"):
        RetentionSchedule(default_tags=("SOX",))


def test_the_gdpr_tag_is_a_ceiling_that_a_statutory_tag_overrides() -> None:
    at = datetime(2026, 6, 1, tzinfo=UTC)
    s = RetentionSchedule(numbers={"clinic": ("GDPR",), "both": ("GDPR", "EU-HC-DE")}, gdpr_max_days=90)
    gdpr = s.decide("clinic", None, at)
    assert (gdpr.governing, (gdpr.retain_until - at).days, gdpr.tags) == ("GDPR", 90, ("GDPR",))
    both = s.decide("both", None, at)  # a legal obligation to keep (Art 17(3)(b)) wins over the ceiling
    assert (both.governing, both.retain_until.year) == ("EU-HC-DE", 2036)
    assert not s.decide("other", None, at).tags and s.decide("other", None, at).governing == "GDPR-max"
    with pytest.raises(InvalidInput, match="gdpr_max_days"):
        RetentionSchedule(tenants={"waba1": ("GDPR",)})


def test_erasure_is_granted_under_the_gdpr_tag_and_refused_where_a_statutory_tag_also_applies(
        archive: Archive) -> None:
    archive.schedules.store({"numbers": {p.PNID: ["GDPR"]}, "gdpr_max_days": 30}, "test", datetime.now(UTC))
    ingest(archive, p.inbound(p.text("wamid.g1", ALICE, T, "appointment on Tuesday")))
    [seg] = [s for s in _segments(archive) if s.stream == p.PNID]
    assert seg.retention_rule == "v1:GDPR"
    lock = archive.store.retention(seg.object_key, seg.version_id)
    assert (lock.retain_until - datetime.now(UTC)).days in (29, 30)
    assert archive.erasure().request("dpo:dan", phone=ALICE).outcome == "granted"

    archive.schedules.store({"numbers": {p.PNID: ["GDPR"]}, "tenants": {p.WABA: ["EU-HC-FR"]},
                             "gdpr_max_days": 30}, "test", datetime.now(UTC))
    ingest(archive, p.inbound(p.text("wamid.g2", BOB, T + 5, "test results")))
    refused = archive.erasure().request("dpo:dan", phone=BOB)
    assert refused.outcome == "refused" and refused.basis[0]["article"] == "17(3)(b)"
    assert refused.basis[0]["rules"] == ["v2:EU-HC-FR"]


def test_a_sec_bd_and_mifid_record_gets_five_years_and_a_change_keeps_existing_locks(archive: Archive) -> None:
    archive.schedules.store({"numbers": {p.PNID: ["SEC-BD", "MiFID"]}}, "test", datetime.now(UTC))
    ingest(archive, p.inbound(p.text("wamid.r1", ALICE, T, "first")))
    [first] = _segments(archive)
    lock = archive.store.retention(first.object_key, first.version_id)
    assert first.retention_rule == "v1:MiFID"
    assert lock.mode == "COMPLIANCE" and lock.retain_until.year == datetime.now(UTC).year + 5

    archive.schedules.store({"numbers": {p.PNID: ["SEC-BD"]}}, "test", datetime.now(UTC))  # shorter: 3 years
    with archive.engine.connect() as conn:  # every version is itself a sealed record
        assert conn.execute(sa.select(sa.func.count()).where(events.c.kind == "retention_schedule")).scalar_one() == 2
    ingest(archive, p.inbound(p.text("wamid.r2", ALICE, T + 1, "second")))
    first_again, second = _segments(archive)
    assert archive.store.retention(first.object_key, first.version_id).retain_until == lock.retain_until
    assert second.retention_rule == "v2:SEC-BD"
    assert archive.store.retention(second.object_key).retain_until.year == datetime.now(UTC).year + 3
    # and the store itself refuses to shorten a COMPLIANCE lock, whatever the schedule says
    with pytest.raises(AccessDeniedError):
        archive.store.extend_retention(first.object_key, first.version_id, datetime.now(UTC) + timedelta(days=400))


# -- holds and retention runs -----------------------------------------------------------------

SHORT = {"default_days": 0, "extra_seconds": 3, "classes": {"audit": ["SEC"]}}


def _wait_past(archive: Archive) -> None:
    newest = max(as_aware(s.retain_until) for s in _segments(archive))
    time.sleep(max(0.0, (newest - datetime.now(UTC)).total_seconds()) + 1.5)


def as_aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def test_a_held_object_outlives_its_retention_and_goes_with_a_certificate_after_release(archive: Archive) -> None:
    archive.schedules.store(SHORT, "test", datetime.now(UTC))
    ingest(archive, p.inbound(p.text("wamid.a1", ALICE, T, "alice, under investigation")))
    ingest(archive, p.inbound(p.text("wamid.b1", BOB, T + 5, "bob, not in scope")))
    alice_seg, bob_seg = _segments(archive)
    hold = archive.holds().place("SEC v. Example", Scope(phones=[ALICE]), "compliance:carol")
    assert hold.objects == [alice_seg.object_key]
    assert archive.store.retention(alice_seg.object_key, alice_seg.version_id).legal_hold
    assert ALICE not in json.dumps(hold.scope)  # the stored scope holds blind indexes only
    with pytest.raises(HoldError):
        Scope()

    _wait_past(archive)
    run = archive.retention_run().run()
    assert run.deleted == [bob_seg.object_key] and alice_seg.object_key in run.held
    assert run.overdue == []  # held objects are not overdue; everything else is gone
    assert not list(archive.store.list_versions(bob_seg.object_key))
    certs, bad = load_certificates(archive.store, archive.public_key)
    assert not bad and [o["key"] for c in certs for o in c["objects"]] == [bob_seg.object_key]
    assert _message(archive, "wamid.b1").content is None  # the SQL copy of the ciphertext went too
    archive.sealer().seal_all()
    _verify(archive)  # the deleted segment is accounted for by its signed certificate

    # holds survive a restart, and are listed with their scope and objects
    again = open_archive(archive.settings)
    try:
        [listed] = again.holds().all()
        assert (listed.id, listed.matter, listed.objects, listed.released_at) == (
            hold.id, "SEC v. Example", [alice_seg.object_key], None)
    finally:
        again.engine.dispose()

    with pytest.raises(HoldError, match="reason"):
        archive.holds().release(hold.id, "compliance:carol", " ")
    assert archive.holds().release(hold.id, "compliance:carol", "matter closed") == [alice_seg.object_key]
    run = archive.retention_run().run()
    assert alice_seg.object_key in run.deleted and run.overdue == []
    assert archive.retention_run().run().deleted == []  # idempotent: nothing left to do
    archive.sealer().seal_all()
    _verify(archive)


def test_a_forged_or_edited_certificate_does_not_excuse_a_missing_segment(archive: Archive) -> None:
    archive.schedules.store(SHORT, "test", datetime.now(UTC))
    ingest(archive, p.inbound(p.text("wamid.f1", BOB, T, "x")))
    _wait_past(archive)
    [cert_id] = archive.retention_run().run().certificates
    data = archive.store.get(f"dispositions/{cert_id}.json")
    body = open_document(data, archive.public_key, "cert")
    assert body["objects"][0]["leaf_hashes"]
    # a copy of the archive where the certificate was tampered with
    from archiver.objectstore import DirectoryObjectStore
    from audit.verify import Verifier

    root = archive.settings.data_dir / "copy"
    for key in archive.store.list_keys(""):
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(archive.store.get(key))
    (root / f"dispositions/{cert_id}.json").write_bytes(data.replace(b'"leaf_hashes":["', b'"leaf_hashes":["0'))
    report = Verifier(DirectoryObjectStore(root), archive.public_key, check_locks=False).verify()
    assert not report.ok and any("disposition certificate" in str(f) for f in report.failures)


# -- erasure ----------------------------------------------------------------------------------

def test_with_no_schedule_stored_the_built_in_period_is_statutory_and_erasure_is_refused(archive: Archive) -> None:
    """Issue 16's finding: with no schedule stored, an erasure on a live archive was granted (basis [])
    and the records shredded. The built-in lock is the firm's obligation until it says otherwise."""
    ingest(archive, p.inbound(p.text("wamid.n1", ALICE, T, "keep me")))
    decision = archive.erasure().request("dpo:dan", phone=ALICE)
    assert decision.outcome == "refused"
    [basis] = decision.basis
    assert basis["article"] == "17(3)(b)" and basis["rules"] == ["v0:default"]
    assert "strongroom retention set" in basis["reason"]
    assert json.loads(open_record(archive, _message(archive, "wamid.n1")))["message"]["text"]["body"] == "keep me"


def test_erasure_is_refused_while_held_granted_otherwise_and_verify_still_passes(archive: Archive) -> None:
    archive.schedules.store({"default_days": 1}, "test", datetime.now(UTC))  # no statutory obligation
    ingest(archive, p.inbound(p.text("wamid.a1", ALICE, T, "alice")), p.inbound(p.text("wamid.b1", BOB, T, "bob")))
    hold = archive.holds().place("Doe v. Bank", Scope(phones=[ALICE]), "compliance:carol")
    erasure = archive.erasure()

    refused = erasure.request("dpo:dan", phone=ALICE)
    assert refused.outcome == "refused" and refused.basis[0]["article"] == "17(3)(e)"
    assert refused.basis[0]["holds"] == [hold.id]
    assert json.loads(open_record(archive, _message(archive, "wamid.a1")))["message"]["text"]["body"] == "alice"

    granted = erasure.request("dpo:dan", phone=BOB)
    assert granted.outcome == "granted" and granted.certificate_key
    cert = open_document(archive.store.get(granted.certificate_key), archive.public_key, "cert")
    assert cert["key_ids"] == ["subj:" + granted.subject] and cert["records_made_unreadable"] >= 2
    with pytest.raises(KeyDestroyedError):
        open_record(archive, _message(archive, "wamid.b1"))
    fresh = open_archive(archive.settings)  # no cached key anywhere: decrypt fails everywhere
    try:
        with pytest.raises(KeyDestroyedError):
            open_record(fresh, _message(fresh, "wamid.b1"))
    finally:
        fresh.engine.dispose()
    assert json.loads(open_record(archive, _message(archive, "wamid.a1")))["message"]["text"]["body"] == "alice"
    # after the erasure: a late delivery from before it keeps no content; a new message is a new subject
    now = int(time.time())
    ingest(archive, p.inbound(p.text("wamid.b0", BOB, T - 60, "late, from before the erasure")),
           p.inbound(p.text("wamid.b2", BOB, now + 5, "hello again")))
    assert _message(archive, "wamid.b0").content is None
    assert _message(archive, "wamid.b2").conversation != granted.subject
    assert json.loads(open_record(archive, _message(archive, "wamid.b2")))["message"]["text"]["body"] == "hello again"
    archive.sealer().seal_all()
    _verify(archive)

    # once the hold is released, the restricted subject is shredded automatically
    archive.holds().release(hold.id, "compliance:carol", "settled")
    [auto] = erasure.process_restricted()
    assert auto.subject == refused.subject and auto.certificate_key
    with pytest.raises(KeyDestroyedError):
        open_record(archive, _message(archive, "wamid.a1"))
    with archive.engine.connect() as conn:
        kinds = conn.execute(sa.select(events.c.kind, events.c.type).where(events.c.stream == "audit")).all()
    assert ("erasure_decision", "refused") in kinds and ("key_destruction_certificate", "shred") in kinds


def test_statutory_retention_refuses_erasure_with_its_end_date(archive: Archive) -> None:
    archive.schedules.store({"numbers": {p.PNID: ["FINRA"]}}, "test", datetime.now(UTC))
    ingest(archive, p.inbound(p.text("wamid.c1", ALICE, T, "trade confirmation")))
    decision = archive.erasure().request("dpo:dan", phone=ALICE)
    assert decision.outcome == "refused"
    [basis] = decision.basis
    assert basis["article"] == "17(3)(b)" and basis["rules"] == ["v1:FINRA"]
    assert decision.retention_end is not None and decision.retention_end.year == datetime.now(UTC).year + 6
    assert archive.erasure().process_restricted() == []  # still blocked


def test_the_cli_drives_schedules_holds_retention_and_erasure(
    archive: Archive, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    archive.schedules.store({"default_days": 1}, "test", datetime.now(UTC))  # the firm's own: no statutory period
    ingest(archive, p.inbound(p.text("wamid.cli1", ALICE, T, "CANARY-cli-text")))
    env = subprocess_env(make_settings())
    cli = CliRunner()

    def run(*args: str, code: int = 0) -> Any:
        result = cli.invoke(app, list(args), env=env)
        assert result.exit_code == code, result.output
        return json.loads(result.stdout) if result.stdout.lstrip().startswith(("{", "[")) else result.stdout

    schedule = tmp_path / "schedule.json"
    schedule.write_text(json.dumps({"numbers": {p.PNID: ["HIPAA"]}, "gdpr_max_days": 365}))
    assert "never shortened" in run("retention", "set", str(schedule))
    assert run("retention", "show")["schedule"]["numbers"] == {p.PNID: ["HIPAA"]}
    schedule.write_text(json.dumps({"numbers": {p.PNID: ["SOX"]}}))
    run("retention", "set", str(schedule), code=2)

    placed = run("hold", "place", "--matter", "M-1", "--phone", ALICE)
    assert len(placed["objects"]) == 1
    [listed] = run("hold", "list")["holds"]
    assert listed["matter"] == "M-1" and listed["released_at"] is None
    run("hold", "place", "--matter", "M-2", code=2)  # no scope
    refused = run("erasure", "request", "--phone", ALICE)
    assert refused["outcome"] == "refused"
    run("erasure", "request", "--phone", "19999999999", code=2)  # nobody holds that number
    exported = run("erasure", "access", "--phone", ALICE, "--out", str(tmp_path / "art15"))
    assert exported["records"] >= 2  # the message and its raw change (and the identity record)
    lines = (tmp_path / "art15" / "records.jsonl").read_text().splitlines()
    assert any("CANARY-cli-text" in line for line in lines)
    assert oct((tmp_path / "art15" / "records.jsonl").stat().st_mode & 0o777) == "0o600"

    assert run("hold", "release", placed["hold"], "--reason", "closed")["lifted"] == placed["objects"]
    ran = run("retention", "run")  # the restricted subject is no longer blocked: shredded now
    assert ran["overdue"] == [] and ran["shredded_subjects"] == [refused["subject"]]


def test_a_saved_query_hold_and_concurrent_retention_runs(archive: Archive) -> None:
    archive.schedules.store(SHORT, "test", datetime.now(UTC))
    ingest(archive, p.inbound(p.text("wamid.q1", ALICE, T, "keep me")))
    ingest(archive, p.inbound(p.text("wamid.q2", BOB, T + 1, "not me")))
    keep, other = _segments(archive)
    hold = archive.holds().place("Q-1", Scope(query="wamid = 'wamid.q1'"), "compliance:carol")
    assert hold.objects == [keep.object_key]
    _wait_past(archive)
    # two replicas at once: one run does the work, the other backs off; each object goes once
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: archive.retention_run().run(), range(2)))
    deleted = [k for r in results for k in r.deleted]
    assert deleted == [other.object_key]
    assert len({c for r in results for c in r.certificates}) == 1
    assert archive.store.retention(keep.object_key, keep.version_id).legal_hold
