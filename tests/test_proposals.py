"""Four eyes (issue 16, item 4): irreversible decisions are proposals a second person approves."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from archiver.db import events
from archiver.errors import KeyDestroyedError
from strongroom import payloads as p
from strongroom.app import create_app
from strongroom.cli import app as cli_app
from strongroom.runtime import Archive, open_archive
from strongroom.settings import Settings
from tests.conftest import ingest, subprocess_env
from tests.test_api import login

ALICE = "16505550777"
T = int(datetime.now(UTC).timestamp()) - 3600


@dataclass
class Firm:
    archive: Archive
    client: TestClient
    hdr: dict[str, dict[str, str]]  # person -> Authorization header

    def post(self, who: str, path: str, body: dict[str, Any]) -> Any:
        return self.client.post(path, json=body, headers=self.hdr[who])

    def sealed(self, prefix: str) -> list[dict[str, Any]]:
        self.archive.sealer().seal_stream("audit")
        with self.archive.engine.connect() as conn:
            rows = conn.execute(sa.select(events).where(events.c.stream == "audit", events.c.seq.is_not(None),
                                                        events.c.type.like(f"{prefix}%")).order_by(events.c.id)).all()
        return [json.loads(self.archive.keyring.open_record(r)) for r in rows]


@pytest.fixture
def firm(make_settings: Callable[..., Settings]) -> Iterator[Firm]:
    a = open_archive(make_settings())
    client = TestClient(create_app(a))
    accounts = a.accounts()
    hdr = {}
    for name, role, tenants in (("carol", "compliance", None), ("dave", "compliance", None),
                                ("erin", "admin", None), ("frank", "admin", None),
                                ("tina", "compliance", [p.WABA])):
        hdr[name] = {"Authorization": f"Bearer {login(client, accounts.create_user(name, role, tenants, 'test', approved=True))}"}
    yield Firm(a, client, hdr)
    a.close()


def test_an_erasure_needs_a_second_person_and_both_steps_are_sealed(firm: Firm) -> None:
    # the schedule first (nothing statutory, so erasure can be granted): itself a proposal
    sched = firm.post("carol", "/api/v1/proposals", {"action": "retention_schedule", "reason": "trial firm",
                                                       "params": {"schedule": {"default_days": 1}}})
    assert sched.status_code == 201, sched.text
    assert firm.post("dave", f"/api/v1/proposals/{sched.json()['id']}/approve",
                     {"reason": "checked"}).json()["result"] == {"version": 1}
    ingest(firm.archive, p.inbound(p.text("wamid.f1", ALICE, T, "erase me")))
    firm.archive.process_pending()

    made = firm.post("carol", "/api/v1/proposals", {"action": "erasure", "params": {"phone": ALICE},
                                                      "reason": "GDPR Art 17 request #42"})
    assert made.status_code == 201 and made.json()["state"] == "proposed"
    assert ALICE not in json.dumps(made.json())  # the summary names nobody
    pid = made.json()["id"]
    own = firm.post("carol", f"/api/v1/proposals/{pid}/approve", {"reason": "mine"})
    assert own.status_code == 403 and "other than its proposer" in own.json()["detail"]
    assert firm.post("erin", f"/api/v1/proposals/{pid}/approve", {"reason": "x"}).status_code == 403  # wrong role
    done = firm.post("dave", f"/api/v1/proposals/{pid}/approve", {"reason": "verified the request"})
    assert done.status_code == 200 and done.json()["state"] == "executed"
    assert done.json()["result"]["outcome"] == "granted"
    with firm.archive.engine.connect() as conn:
        r = conn.execute(sa.select(events).where(events.c.wamid == "wamid.f1")).one()
    with pytest.raises(KeyDestroyedError):
        firm.archive.keyring.open_record(r)
    again = firm.post("dave", f"/api/v1/proposals/{pid}/approve", {"reason": "twice"})
    assert again.status_code == 409
    steps = [(e["action"], e["details"].get("proposal")) for e in firm.sealed("proposal.")]
    assert [a for a, q in steps if q == pid] == ["proposal.proposed", "proposal.approved", "proposal.executed"]
    assert ALICE not in json.dumps(firm.sealed("proposal."))
    listed = firm.client.get("/api/v1/proposals", headers=firm.hdr["erin"]).json()["proposals"]
    assert {x["id"]: x["state"] for x in listed}[pid] == "executed"


def test_an_unapproved_proposal_expires_and_a_rejected_one_does_nothing(firm: Firm) -> None:
    carol = firm.archive.accounts().authenticate(firm.hdr["carol"]["Authorization"])
    made = firm.archive.proposals().propose(carol, "hold_release", {"hold": "H-1"}, "matter closed",
                                            ttl=timedelta(seconds=1))
    time.sleep(1.2)
    late = firm.post("dave", f"/api/v1/proposals/{made['id']}/approve", {"reason": "too late"})
    assert late.status_code == 409
    assert any(e["details"].get("proposal") == made["id"] for e in firm.sealed("proposal.expired"))

    rot = firm.post("erin", "/api/v1/proposals", {"action": "kek_rotation", "reason": "yearly"})
    assert rot.status_code == 201
    kek = firm.archive.keyring.kek.kek_id
    no = firm.post("frank", f"/api/v1/proposals/{rot.json()['id']}/reject", {"reason": "not during the audit"})
    assert no.status_code == 200 and no.json()["state"] == "rejected"
    assert firm.archive.keyring.kek.kek_id == kek  # nothing rotated

    rot2 = firm.post("erin", "/api/v1/proposals", {"action": "kek_rotation", "reason": "yearly, after the audit"})
    yes = firm.post("frank", f"/api/v1/proposals/{rot2.json()['id']}/approve", {"reason": "ok"})
    assert yes.json()["state"] == "executed" and firm.archive.keyring.kek.kek_id != kek


def test_who_may_propose(firm: Firm) -> None:
    tenant_bound = firm.post("tina", "/api/v1/proposals", {"action": "erasure", "params": {"phone": ALICE},
                                                             "reason": "x"})
    assert tenant_bound.status_code == 403 and "all-tenant" in tenant_bound.json()["detail"]
    bad = firm.post("carol", "/api/v1/proposals", {"action": "erasure", "params": {}, "reason": "x"})
    assert bad.status_code == 400
    unknown = firm.post("carol", "/api/v1/proposals", {"action": "drop_everything", "reason": "x"})
    assert unknown.status_code == 400
    assert firm.post("carol", "/api/v1/proposals", {"action": "kek_rotation", "reason": "x"}).status_code == 403


def test_the_cli_decides_as_a_signed_in_person_and_regulated_mode_has_no_direct_path(
        make_settings: Callable[..., Settings]) -> None:
    open_archive(make_settings()).close()  # the bucket, with its COMPLIANCE default
    settings = make_settings(mode="regulated")
    env = subprocess_env(settings) | {"STRONGROOM_MODE": "regulated"}
    runner = CliRunner()
    anon = runner.invoke(cli_app, ["proposals", "add", "kek_rotation", "--reason", "x"], env=env)
    assert anon.exit_code != 0 and "sign in first" in anon.output
    for args in (["erasure", "request", "--phone", ALICE], ["keys", "rotate-kek"], ["keys", "rotate-signing"],
                 ["hold", "release", "H-1", "--reason", "x"]):
        direct = runner.invoke(cli_app, args, env=env)
        assert direct.exit_code != 0 and "needs four eyes" in direct.output, (args, direct.output)
