"""Every CLI read of archived data or ledger state writes exactly one access event, like its API
twin, attributed to whoever signed in with `strongroom login` (else the local operator), and the
roles and tenants of a signed-in person apply on the CLI exactly as on the API."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyotp
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from archiver.db import events
from strongroom import payloads as p
from strongroom.cli import app
from strongroom.runtime import Archive
from strongroom.settings import Settings
from tests.conftest import ingest, subprocess_env

T = 1_764_000_000
ALICE = "16505550777"
DAY = datetime.fromtimestamp(T, UTC).date().isoformat()

# command → (expected action of its one access event, whether it exits 0 or 1 for "found something")
READS: dict[str, tuple[list[str], str]] = {
    "search": (["search", "trade"], "search"),
    "hold list": (["hold", "list"], "holds.list"),
    "retention show": (["retention", "show"], "report.retention"),
    "consent show": (["consent", "show", "--stream", p.PNID, "--phone", ALICE], "ledger.consent"),
    "templates show": (["templates", "show", "--tenant", p.WABA, "--name", "trade_confirm", "--language", "en"],
                       "ledger.templates"),
    "violations": (["violations", "--json"], "violations"),
    "completeness": (["completeness", "--day", DAY, "--json"], "report.completeness"),
    "users list": (["users", "list"], "admin.principals"),
    "query": (["query", "SELECT count(*) AS n FROM records"], "query"),
    "erasure access": (["erasure", "access", "--phone", ALICE, "--out", "{tmp}/art15"], "erasure.access"),
    "export": (["export", "--out", "{tmp}/bundle", "--matter", "M-1", "--requested-by", "FINRA"], "export.write"),
}


def _access_events(archive: Archive) -> list[dict[str, Any]]:
    with archive.engine.connect() as conn:
        rows = conn.execute(sa.select(events).where(events.c.natural_key.like("access:%"))
                            .order_by(events.c.id)).all()
    return [json.loads(archive.keyring.open_record(r)) for r in rows]


@pytest.mark.parametrize("sql_url", ["sqlite"], indirect=True)  # the access layer itself runs on both in test_api
def test_every_cli_read_writes_exactly_one_access_event(archive: Archive, make_settings: Callable[..., Settings],
                                                        tmp_path: Path) -> None:
    ingest(archive, p.inbound(p.text("wamid.r1", ALICE, T, "please confirm the trade")),
           p.echo("wamid.r2", ALICE, T + 60, "trade confirmed"),
           p.template_status("APPROVED", "trade_confirm", "en", T - 3600))
    env = subprocess_env(make_settings()) | {"STRONGROOM_SESSION_FILE": str(tmp_path / "no-session.json")}
    cli = CliRunner()
    for name, (args, action) in READS.items():
        before = len(_access_events(archive))
        result = cli.invoke(app, [a.replace("{tmp}", str(tmp_path)) for a in args], env=env)
        assert result.exit_code in (0, 1), (name, result.output)  # 1: found gaps or violations, not an error
        after = _access_events(archive)
        assert len(after) == before + 1, f"`strongroom {name}` wrote {len(after) - before} access events"
        ev = after[-1]
        assert ev["action"] == action and ev["actor"].startswith("cli:"), (name, ev["action"], ev["actor"])
        d = ev["details"]
        assert d["role"] == "operator" and d["via"] == "cli" and d["tenants"] == "*"
        assert isinstance(d["count"], int) and len(d["result_sha256"]) == 64
    # writes are not reads: no access event for them
    before = len(_access_events(archive))
    assert cli.invoke(app, ["hold", "place", "--matter", "M-2", "--phone", ALICE], env=env).exit_code == 0
    assert len(_access_events(archive)) == before


@pytest.mark.parametrize("sql_url", ["sqlite"], indirect=True)
def test_cli_reads_are_the_signed_in_persons_with_their_role_and_tenants(
        archive: Archive, make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    ingest(archive, p.inbound(p.text("wamid.s1", ALICE, T, "please confirm the trade")))
    archive.search_index().update()
    accounts = archive.accounts()
    session = tmp_path / "session.json"
    env = subprocess_env(make_settings()) | {"STRONGROOM_SESSION_FILE": str(session)}
    cli = CliRunner()

    def sign_in(name: str, role: str, tenants: list[str] | None) -> None:
        created = accounts.create_user(name, role, tenants, "test", approved=True)
        token, expires = accounts.login(name, created["password"], pyotp.TOTP(created["totp_secret"]).now())
        session.write_text(json.dumps({"url": "http://127.0.0.1:1", "name": name, "token": token,
                                       "expires_at": expires.isoformat()}))

    sign_in("reviewer-1", "auditor", [p.WABA])
    found = cli.invoke(app, ["search", "trade", "--json"], env=env)
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout)["total"] == 1
    ev = _access_events(archive)[-1]
    assert ev["actor"] == "session:reviewer-1" and ev["details"]["role"] == "auditor"
    assert ev["details"]["tenants"] == [p.WABA]
    token = cli.invoke(app, ["token"], env=env)
    assert token.exit_code == 0 and token.stdout.strip() == json.loads(session.read_text())["token"]

    sign_in("other-tenant", "auditor", ["999999999999999"])
    assert json.loads(cli.invoke(app, ["search", "trade", "--json"], env=env).stdout)["total"] == 0

    sign_in("it-admin", "admin", None)  # an admin reads no archived content, on the CLI as on the API
    before = len(_access_events(archive))
    refused = cli.invoke(app, ["search", "trade"], env=env)
    assert refused.exit_code == 4 and "may not read" in refused.output
    assert len(_access_events(archive)) == before
    assert cli.invoke(app, ["users", "list"], env=env).exit_code == 0

    accounts.logout(json.loads(session.read_text())["token"])  # ended elsewhere: the CLI says so, reads nothing
    ended = cli.invoke(app, ["hold", "list"], env=env)
    assert ended.exit_code == 4 and "strongroom login" in ended.output


@pytest.mark.parametrize("sql_url", ["sqlite"], indirect=True)
def test_read_only_commands_run_without_the_private_signing_key(
        archive: Archive, make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """A reviewer's host holds the signing key's .pub, not the key: every read-only command runs there,
    none makes a key of its own, the access events wait for the worker, and whatever must sign refuses."""
    from archiver import crypto

    ingest(archive, p.inbound(p.text("wamid.k1", ALICE, T, "please confirm the trade")))
    settings = make_settings()
    key = settings.key_path("signing")
    pub = crypto.public_key_path(key)
    assert pub.exists() and pub.stat().st_mode & 0o777 == 0o600
    assert crypto.load_public_key(pub.read_bytes()) == archive.public_key
    away = tmp_path / "signing-key-elsewhere.pem"
    os.replace(key, away)
    env = subprocess_env(settings) | {"STRONGROOM_SESSION_FILE": str(tmp_path / "no-session.json")}
    cli = CliRunner()
    try:
        audit_size = archive.expected_sizes().get("audit", 0)
        reads = [["search", "trade"], ["hold", "list"], ["retention", "show"], ["violations", "--json"],
                 ["completeness", "--day", DAY, "--json"], ["verify"], ["keys", "history"], ["proposals", "list"],
                 ["query", "SELECT count(*) AS n FROM records"], ["numbers", "list"]]
        before = len(_access_events(archive))
        for args in reads:
            result = cli.invoke(app, args, env=env)
            assert result.exit_code in (0, 1), (args, result.output)
        assert len(_access_events(archive)) == before + 6  # one per audited read (the first six), recorded
        public = cli.invoke(app, ["keys", "public"], env=env)
        assert public.exit_code == 0 and public.stdout.encode() == pub.read_bytes()
        assert not key.exists(), "a read-only command made a signing key of its own"
        assert archive.expected_sizes().get("audit", 0) == audit_size  # nothing sealed: no key here

        for args in (["seal"], ["export", "--out", str(tmp_path / "b"), "--matter", "M-9", "--requested-by", "x"]):
            refused = cli.invoke(app, args, env=env)
            assert refused.exit_code != 0 and "signing key" in refused.output, (args, refused.output)
        assert not key.exists()
    finally:
        os.replace(away, key)
    assert archive.sealer().seal_all() > 0  # the worker (here: this process, with the key) seals them
    with archive.engine.connect() as conn:
        unsealed = conn.execute(sa.select(sa.func.count()).select_from(events)
                                .where(events.c.natural_key.like("access:%"), events.c.seq.is_(None))).scalar()
    assert unsealed == 0
