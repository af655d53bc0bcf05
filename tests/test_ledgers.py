"""Consent and template ledgers as of any instant, conversation windows, and every violation type
next to its compliant twin (R-38…R-42). Webhooks are delivered out of order on purpose."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from archiver.db import events
from archiver.identity import IdentityBook
from archiver.outbound import SendError
from strongroom import payloads as p
from strongroom.cli import app
from strongroom.runtime import Archive
from strongroom.settings import Settings
from tests.conftest import ingest, subprocess_env

T = 1_764_000_000
ALICE, BOB, CAROL, DAVE, ERIN, FRANK = (f"1650555{n:04d}" for n in range(1, 7))


def at(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def subject(archive: Archive, phone: str) -> str:
    found = IdentityBook(archive.engine).at("wa", archive.keyring.blind_index("wa", phone))
    assert found is not None
    return found


def test_consent_as_of_any_instant_with_its_evidence(archive: Archive) -> None:
    ingest(archive, p.inbound(p.text("wamid.hello", ALICE, T, "hi")))
    alice = subject(archive, ALICE)
    ledger = archive.consent()
    form = hashlib.sha256(b"Marketing consent form v3: I agree to receive offers by WhatsApp").hexdigest()
    assert ledger.record(p.PNID, alice, "marketing", "opt_in", "web_form", "crm:signup", at(T + 100),
                         evidence_sha256=form, evidence_ref="form-v3")
    # delivered out of order: the later STOP keyword first, then the resume, then the stop before it
    ingest(archive, p.inbound(p.text("wamid.stop", ALICE, T + 600, " Stop! ")),
           p.preference(ALICE, "resume", T + 400), p.preference(ALICE, "stop", T + 300))
    ledger.sync()
    assert ledger.sync() == 0  # idempotent

    def state(ts: int, category: str = "marketing") -> tuple[str, str | None]:
        s = ledger.state(p.PNID, alice, category, at(ts))
        return s.status, s.entry["method"] if s.entry else None

    assert state(T + 50) == ("unknown", None)
    assert state(T + 200) == ("opted_in", "web_form")
    assert ledger.state(p.PNID, alice, "marketing", at(T + 200)).entry["evidence_sha256"] == form
    assert state(T + 350) == ("opted_out", "user_preferences")
    assert state(T + 450) == ("opted_in", "user_preferences")
    assert state(T + 700) == ("opted_out", "keyword")
    assert state(T + 700, "utility") == ("opted_out", "keyword")  # STOP ends business-initiated messages
    assert state(T + 700, "service") == ("unknown", None)
    assert [e["action"] for e in ledger.history(p.PNID, alice)] == ["opt_in", "opt_out", "opt_in", "opt_out",
                                                                      "opt_out"]
    with pytest.raises(ValueError):
        ledger.record(p.PNID, alice, "promos", "opt_in", "x", "y", at(T))
    # every entry is a sealed record under the contact's key
    archive.sealer().seal_all()
    with archive.engine.connect() as conn:
        sealed = conn.execute(sa.select(events.c.subject_key_id, events.c.segment_id).where(
            events.c.kind == "consent")).all()
    assert len(sealed) == 5 and all(r.segment_id and r.subject_key_id == "subj:" + alice for r in sealed)


def test_template_state_as_of_any_instant(archive: Archive) -> None:
    ledger = archive.templates()
    assert ledger.register(p.WABA, "promo", "en", "marketing", "Hi {{1}}, 20% off today", "crm", at(T),
                           status="PENDING")
    ingest(archive, p.template_status("PAUSED", "promo", "en", T + 500, category="UTILITY", reason="NONE"),
           p.template_components("promo", "en", T + 400, "Hi {{1}}, 30% off today"),
           p.template_category("promo", "en", T + 300, "MARKETING", "UTILITY"),
           p.template_status("APPROVED", "promo", "en", T + 100))
    ledger.sync()

    def state(ts: int) -> tuple[str | None, str | None, int]:
        s = ledger.state(p.WABA, "promo", "en", at(ts))
        return s.status, s.category, s.version

    assert state(T - 1) == (None, None, 0)
    assert state(T + 50) == ("PENDING", "MARKETING", 1)
    assert state(T + 150) == ("APPROVED", "MARKETING", 1)
    assert state(T + 350) == ("APPROVED", "UTILITY", 1)
    assert state(T + 450) == ("APPROVED", "UTILITY", 2)
    assert state(T + 600) == ("PAUSED", "UTILITY", 2)


def _scenario(archive: Archive) -> None:
    ingest(archive,
           p.template_status("APPROVED", "offer", "en", T - 1000, category="MARKETING"),
           p.template_status("PAUSED", "offer", "en", T + 5000, category="MARKETING"),
           p.template_status("APPROVED", "otp", "en", T - 1000, category="UTILITY"),
           *(p.inbound(p.text(f"wamid.hi.{n}", n, T - 90_000, "old hello")) for n in (ALICE, BOB, CAROL, DAVE, ERIN)),
           p.inbound(p.text("wamid.stop.carol", CAROL, T - 10, "STOP")),
           p.inbound(p.text("wamid.hi.frank", FRANK, T - 3600, "can you call me back?")))
    archive.consent().record(p.PNID, subject(archive, ALICE), "marketing", "opt_in", "checkbox", "crm", at(T - 500),
                             evidence_sha256="0" * 64)
    sends = [
        p.send("wamid.s.paused", ALICE, T + 6000, ("offer", "en")),      # template_not_approved
        p.send("wamid.s.approved", ALICE, T + 10, ("offer", "en")),      # twin: approved, opted in
        p.send("wamid.s.no_optin", BOB, T + 20, ("offer", "en")),        # marketing_without_opt_in
        p.send("wamid.s.stopped", CAROL, T + 30, ("otp", "en")),         # opted_out_contact
        p.send("wamid.s.fine", DAVE, T + 40, ("otp", "en")),             # twin: never opted out
        p.send("wamid.s.late", ERIN, T + 50, words="free-form, no window"),  # outside_service_window
        p.send("wamid.s.window", FRANK, T + 60, words="free-form, window open"),  # twin: inside the window
    ]
    assert archive.send_log().record(sends) == len(sends)
    assert archive.send_log().record(sends) == 0  # idempotent by wamid
    ingest(archive, p.echo("wamid.app1", ERIN, T + 70, "the app is not bound by the API window"))


def test_each_violation_next_to_its_compliant_twin(archive: Archive) -> None:
    _scenario(archive)
    checks = archive.compliance()
    checks.run()
    found = {(v["violation"], v["wamid"]) for v in checks.list()}
    assert found == {("template_not_approved", "wamid.s.paused"), ("marketing_without_opt_in", "wamid.s.no_optin"),
                     ("opted_out_contact", "wamid.s.stopped"), ("outside_service_window", "wamid.s.late")}
    stopped = next(v for v in checks.list() if v["wamid"] == "wamid.s.stopped")
    assert stopped["evidence"]["consent_entry"]["method"] == "keyword"
    paused = next(v for v in checks.list() if v["wamid"] == "wamid.s.paused")
    assert paused["evidence"]["status_at_send"] == "PAUSED"
    assert checks.run(recheck=None) == 0 and checks.run(recheck=timedelta(days=3650)) == 0

    # the API sends are archived messages: their statuses reconcile without gaps
    ingest(archive, p.statuses(("wamid.s.fine", DAVE, "delivered", T + 45)))
    [rep] = archive.reconciler().run(at(T).date(), streams=[p.PNID], now=datetime.now(UTC).replace(year=2030))
    assert not [g for g in rep.gaps_opened if g.get("wamid") == "wamid.s.fine"]
    archive.sealer().seal_all()
    report = archive.verifier().verify(expected_sizes=archive.expected_sizes())
    assert report.ok, [str(f) for f in report.failures]


def test_window_state_per_channel(archive: Archive) -> None:
    ingest(archive, p.inbound(p.text("wamid.w1", FRANK, T, "hello")), p.echo("wamid.w2", FRANK, T + 10, "app reply"))
    frank = subject(archive, FRANK)
    windows = archive.compliance().windows
    open_ = windows.state(p.PNID, frank, "api", at(T + 3600))
    assert open_.open and open_.opened_by == "wamid.w1" and open_.expires_at == at(T + 86400)
    assert not windows.state(p.PNID, frank, "api", at(T + 86400 + 1)).open
    assert windows.state(p.PNID, frank, "app", at(T + 86400 * 9)).restricted is False


def test_a_send_log_entry_must_describe_a_send(archive: Archive) -> None:
    good = p.send("wamid.ok", ALICE, T)
    for broken in ({**good, "response": {"error": {"code": 131026}}}, {**good, "sent_at": "yesterday"},
                   {**good, "phone_number_id": None}):
        with pytest.raises(SendError):
            archive.send_log().record([good, broken])
    with archive.engine.connect() as conn:  # all or nothing
        assert conn.execute(sa.select(sa.func.count()).where(events.c.wamid == "wamid.ok")).scalar_one() == 0


def test_the_violations_cli_lists_them_with_evidence(archive: Archive, make_settings: Callable[..., Settings]) -> None:
    _scenario(archive)
    env = subprocess_env(make_settings())
    result = CliRunner().invoke(app, ["violations", "--json"], env=env)
    assert result.exit_code == 1, result.output  # violations exist
    listed = json.loads(result.stdout)["violations"]
    assert {v["violation"] for v in listed} == {"template_not_approved", "marketing_without_opt_in",
                                                "opted_out_contact", "outside_service_window"}
    only = CliRunner().invoke(app, ["violations", "--type", "outside_service_window"], env=env)
    assert "wamid.s.late" in only.stdout and "wamid.s.paused" not in only.stdout


def test_the_ledger_cli(archive: Archive, make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    ingest(archive, p.inbound(p.text("wamid.c1", ALICE, T, "hi")))
    env = subprocess_env(make_settings())
    form = tmp_path / "form-v3.txt"
    form.write_text("I agree to receive offers by WhatsApp")
    cli = CliRunner()
    when = at(T + 100).isoformat()
    r = cli.invoke(app, ["consent", "record", "--stream", p.PNID, "--phone", ALICE, "--category", "marketing",
                         "--action", "opt_in", "--method", "web_form", "--evidence", str(form), "--at", when], env=env)
    assert r.exit_code == 0, r.output
    shown = json.loads(cli.invoke(app, ["consent", "show", "--stream", p.PNID, "--phone", ALICE], env=env).stdout)
    assert shown["state"]["marketing"]["status"] == "opted_in"
    assert shown["state"]["marketing"]["entry"]["evidence_sha256"] == hashlib.sha256(form.read_bytes()).hexdigest()
    naive = cli.invoke(app, ["consent", "show", "--stream", p.PNID, "--phone", ALICE, "--at", "2026-01-01T00:00"],
                       env=env)
    assert naive.exit_code == 2
    body = tmp_path / "body.txt"
    body.write_text("Your code is {{1}}")
    r = cli.invoke(app, ["templates", "register", "--tenant", p.WABA, "--name", "otp", "--language", "en",
                         "--category", "AUTHENTICATION", "--body", str(body), "--at", when], env=env)
    assert r.exit_code == 0, r.output
    state = json.loads(cli.invoke(app, ["templates", "show", "--tenant", p.WABA, "--name", "otp", "--language", "en"],
                                  env=env).stdout)
    assert (state["status"], state["category"], state["body_versions"]) == ("PENDING", "AUTHENTICATION", 1)
