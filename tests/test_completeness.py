"""Reconciliation: what is referenced but missing, lost history chunks, disconnects and app silence
all become sealed records, and a sealed daily report says so (R-17, R-18, R-21)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa
from typer.testing import CliRunner

from archiver.db import events
from archiver.sqlutil import Row
from policies.completeness import COVERAGE_LIMITS, latest_reports
from strongroom import payloads as p
from strongroom.cli import app
from strongroom.runtime import Archive, Worker
from strongroom.settings import Settings
from tests.conftest import ingest, record_json, subprocess_env

DAY = date(2026, 11, 20)
T = int(datetime(2026, 11, 20, 9, 0, tzinfo=UTC).timestamp())
LATER = datetime.now(UTC) + timedelta(days=1)  # reconciliation runs after the grace period
ALICE = "16505551234"


def _gaps(archive: Archive, stream: str = p.PNID) -> dict[str, Row]:
    with archive.engine.connect() as conn:
        return {r.natural_key: r for r in conn.execute(
            sa.select(events).where(events.c.kind == "gap", events.c.stream == stream))}


def _scenario() -> dict[str, bytes]:
    return {
        "m1": p.inbound(p.text("wamid.m1", ALICE, T + 10, "hello")),
        "m2": p.inbound(p.text("wamid.m2", ALICE, T + 20, "replying", context={"from": ALICE, "id": "wamid.m1"})),
        "m3": p.inbound(p.text("wamid.m3", ALICE, T + 30, "this webhook is lost")),
        "m4": p.inbound({"from": ALICE, "id": "wamid.m4", "timestamp": str(T + 40), "type": "reaction",
                         "reaction": {"message_id": "wamid.m3", "emoji": "\U0001f44d"}}),
        "e1": p.echo("wamid.e1", ALICE, T + 50, "sent from the app"),
        "s1": p.statuses(("wamid.api1", ALICE, "delivered", T + 60)),
    }


def test_a_dropped_webhook_becomes_a_gap_and_its_late_arrival_closes_it(archive: Archive) -> None:
    bodies = _scenario()
    ingest(archive, *(b for k, b in bodies.items() if k != "m3"))  # one webhook never arrives

    # within the grace period nothing is reported yet (statuses often precede their message)
    assert archive.reconciler().run(DAY, now=datetime.now(UTC))[0].gaps_opened == []

    [rep] = archive.reconciler().run(DAY, streams=[p.PNID], now=LATER)
    gaps = _gaps(archive)
    assert set(gaps) == {"gap:unarchived:wamid.m3", "gap:unarchived:wamid.api1"}
    m3 = record_json(archive, gaps["gap:unarchived:wamid.m3"])
    assert (m3["kinds"], m3["status"]) == (["message"], "open")
    assert record_json(archive, gaps["gap:unarchived:wamid.api1"])["kinds"] == ["status"]
    assert not rep.complete and rep.open_gaps == 2
    assert rep.counts["message:api:inbound"] == 3 and rep.counts["message:app:outbound"] == 1
    assert rep.statuses == {"delivered": 1}

    # rerunning changes nothing
    archive.reconciler().run(DAY, streams=[p.PNID], now=LATER)
    assert set(_gaps(archive)) == set(gaps)

    # Meta's retry finally delivers m3: the gap is closed by a new record, the old one stays
    ingest(archive, bodies["m3"])
    [rep] = archive.reconciler().run(DAY, streams=[p.PNID], now=LATER + timedelta(hours=1))
    gaps = _gaps(archive)
    assert gaps["gap_closed:unarchived:wamid.m3"].status == "closed"
    assert "gap:unarchived:wamid.m3" in gaps and rep.open_gaps == 1

    # the reports are sealed on the audit stream and verify like everything else
    archive.sealer().seal_all()
    [sealed] = latest_reports(archive.engine, archive.keyring, DAY, p.PNID)
    assert sealed["open_gaps"] == 1 and set(sealed["coverage_limits"]) == set(COVERAGE_LIMITS)
    report = archive.verifier().verify(expected_sizes=archive.expected_sizes())
    assert report.ok, [str(f) for f in report.failures]


def test_a_disconnect_is_a_gap_with_a_start_and_an_end(archive: Archive) -> None:
    ingest(archive,
            p.account_update("PARTNER_REMOVED", T + 100,
                             disconnection_info={"reason": "PRIMARY_INACTIVITY", "initiated_by": "SYSTEM"}),
            p.inbound(p.text("wamid.back", ALICE, T + 5000, "are you there?")),
            p.account_update("ACCOUNT_OFFBOARDED", T + 9000),
            p.account_update("ACCOUNT_RECONNECTED", T + 9600))
    archive.reconciler().run(DAY, now=LATER)
    stream = f"waba-{p.WABA}"
    gaps = {k: record_json(archive, r) for k, r in _gaps(archive, stream).items()}
    start1 = datetime.fromtimestamp(T + 100, UTC).isoformat()
    start2 = datetime.fromtimestamp(T + 9000, UTC).isoformat()
    assert set(gaps) == {f"gap:disconnect:{start1}", f"gap_closed:disconnect:{start1}",
                         f"gap:disconnect:{start2}", f"gap_closed:disconnect:{start2}"}
    first = gaps[f"gap_closed:disconnect:{start1}"]
    assert (first["reason"], first["end"], first["resolution"]) == (
        "PRIMARY_INACTIVITY", datetime.fromtimestamp(T + 5000, UTC).isoformat(), "capture resumed")
    second = gaps[f"gap_closed:disconnect:{start2}"]
    assert (second["end"], second["resolution"]) == (datetime.fromtimestamp(T + 9600, UTC).isoformat(), "reconnected")


def test_a_disconnect_without_resumption_stays_open(archive: Archive) -> None:
    ingest(archive, p.account_update("PARTNER_REMOVED", T + 100))
    [rep] = archive.reconciler().run(DAY, streams=[f"waba-{p.WABA}"], now=LATER)
    assert list(_gaps(archive, f"waba-{p.WABA}")) == [f"gap:disconnect:{datetime.fromtimestamp(T + 100, UTC).isoformat()}"]
    assert rep.open_gaps == 1 and not rep.complete


def test_missing_history_chunks_are_gaps_until_they_arrive(archive: Archive) -> None:
    chunk = {o: p.history_chunk(1, o, 25 * o, {ALICE: [p.text(f"wamid.h{o}", ALICE, T - 86400 * o, "old")]})
             for o in (1, 2, 3, 4)}
    ingest(archive, chunk[4], chunk[1], chunk[2])  # out of order, chunk 3 missing, progress 100 seen
    [rep] = archive.reconciler().run(DAY, streams=[p.PNID], now=LATER)
    assert rep.history["missing_chunks"] == [3] and rep.history["progress"] == 100
    assert "gap:history_chunk:3" in _gaps(archive)
    ingest(archive, chunk[3])
    [rep] = archive.reconciler().run(DAY, streams=[p.PNID], now=LATER)
    assert "gap_closed:history_chunk:3" in _gaps(archive) and rep.history["complete"]


def test_app_silence_approaching_the_unlink_limit_raises_a_warning(archive: Archive) -> None:
    ingest(archive, p.echo("wamid.e9", ALICE, T, "last time anyone opened the app"))
    [quiet] = archive.reconciler().run(DAY, streams=[p.PNID], now=datetime.fromtimestamp(T, UTC) + timedelta(days=5))
    assert quiet.warnings == []
    [rep] = archive.reconciler().run(DAY, streams=[p.PNID], now=datetime.fromtimestamp(T, UTC) + timedelta(days=13))
    assert [w["warning"] for w in rep.warnings] == ["app_silence"] and rep.warnings[0]["silent_days"] == 13.0
    with archive.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(events.c.kind == "warning")).scalar_one() == 1


def test_capture_gaps_and_unknown_kinds_are_counted_in_the_report(
    archive: Archive, webhook_body: Callable[[str], bytes]
) -> None:
    ingest(archive, webhook_body("unsupported_131060"), webhook_body("history_declined"))
    day = datetime.fromtimestamp(1697044706, UTC).date()
    [rep] = archive.reconciler().run(day, streams=[p.PNID], now=LATER)
    assert {g["gap"] for g in rep.gaps_in_day} == {"content_withheld"}
    # the unsupported message's raw change is kept and flagged, counted on the day it was received
    [today] = archive.reconciler().run(datetime.now(UTC).date(), streams=[p.PNID], now=LATER)
    assert today.counts["not_modelled"] == 1
    assert {r.type for r in _gaps(archive).values()} == {"content_withheld", "history_declined"}


def test_the_cli_reconciles_records_and_prints_the_report(archive: Archive, make_settings: Callable[..., Settings]) -> None:
    ingest(archive, *(b for k, b in _scenario().items() if k != "m3"))
    env = subprocess_env(make_settings()) | {"STRONGROOM_RECONCILE_GRACE_SECONDS": "0"}
    result = CliRunner().invoke(app, ["completeness", "--day", DAY.isoformat(), "--json"], env=env)
    assert result.exit_code == 1, result.output  # gaps open → non-zero, for cron and alerting
    [rep] = [r for r in json.loads(result.stdout)["reports"] if r["stream"] == p.PNID]
    assert {g["natural_key"] for g in rep["gaps_opened"]} == {"gap:unarchived:wamid.m3", "gap:unarchived:wamid.api1"}
    table = CliRunner().invoke(app, ["completeness", "--day", DAY.isoformat()], env=env)
    assert "completeness 2026-11-20" in table.stdout and "coverage limits" in table.stdout
    bad = CliRunner().invoke(app, ["completeness", "--day", "yesterday"], env=env)
    assert bad.exit_code == 2


def test_the_worker_reconciles_on_its_own_schedule(archive: Archive) -> None:
    ingest(archive, p.inbound(p.text("wamid.w1", ALICE, int(datetime.now(UTC).timestamp()), "hi")))
    worker = Worker(archive, interval=1.0)
    worker.reconcile_if_due()
    worker.reconcile_if_due()  # within the interval: nothing new
    archive.sealer().seal_all()
    today = datetime.now(UTC).date()
    with archive.engine.connect() as conn:
        reports = conn.execute(sa.select(sa.func.count()).where(events.c.kind == "completeness_report")).scalar_one()
    assert reports == 1 and latest_reports(archive.engine, archive.keyring, today)[0]["stream"] == p.PNID


def test_repeated_disconnect_events_are_one_outage(archive: Archive) -> None:
    ingest(archive, p.account_update("ACCOUNT_OFFBOARDED", T + 100), p.account_update("PARTNER_REMOVED", T + 200),
           p.account_update("ACCOUNT_RECONNECTED", T + 900))
    archive.reconciler().run(DAY, streams=[f"waba-{p.WABA}"], now=LATER)
    gaps = {k: record_json(archive, r) for k, r in _gaps(archive, f"waba-{p.WABA}").items()}
    start = datetime.fromtimestamp(T + 100, UTC).isoformat()
    assert set(gaps) == {f"gap:disconnect:{start}", f"gap_closed:disconnect:{start}"}
    closed = gaps[f"gap_closed:disconnect:{start}"]
    assert closed["end"] == datetime.fromtimestamp(T + 900, UTC).isoformat() and len(closed["also"]) == 1
