"""The outside security review's attacks (issue 14), each performed against a running app and
asserted to fail safe. Each test would pass the attack on the code before its fix."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from archiver.db import events, stream_tenant, stream_tenants
from strongroom import payloads as p
from tests.conftest import ingest
from tests.test_api import ALICE, PNID_B, WABA_B, T, World, world  # noqa: F401  (the module's archive and tokens)


def _stream_rows(w: World, stream: str) -> list[Any]:
    with w.archive.engine.connect() as conn:
        return conn.execute(sa.select(events.c.natural_key, events.c.tenant).where(events.c.stream == stream)).all()


def test_a_send_log_write_cannot_reach_another_tenants_number_or_claim_an_unbound_one(world: World) -> None:  # noqa: F811
    """Finding 1: an ingest key of tenant A posted items with tenant B's phone_number_id (or a new
    number's) and they were sealed into B's chain, labelled A."""
    hdr = {"Authorization": f"Bearer {world.tokens['ingest']}"}  # tenant A's ingest key
    before = _stream_rows(world, PNID_B)
    theirs = world.client.post("/api/v1/send-log", headers=hdr, json={"items": [
        {**p.send("wamid.x1", ALICE, T + 900), "phone_number_id": PNID_B, "tenant": p.WABA}]})
    unbound = world.client.post("/api/v1/send-log", headers=hdr, json={"items": [
        {**p.send("wamid.x2", ALICE, T + 900), "phone_number_id": "300000000000003"}]})
    assert theirs.status_code == unbound.status_code == 403
    assert theirs.json()["code"] == unbound.json()["code"] == "forbidden"
    # the same answer shape for "another tenant's" and "nobody's": no oracle for which numbers exist
    assert theirs.json()["detail"].replace(PNID_B, "N") == unbound.json()["detail"].replace("300000000000003", "N")
    assert _stream_rows(world, PNID_B) == before and not _stream_rows(world, "300000000000003")
    # one bad item refuses the batch: nothing of it is recorded
    mixed = world.client.post("/api/v1/send-log", headers=hdr, json={"items": [
        p.send("wamid.x3", ALICE, T + 901), {**p.send("wamid.x4", ALICE, T + 901), "phone_number_id": PNID_B}]})
    assert mixed.status_code == 403
    assert not [r for r in _stream_rows(world, p.PNID) if r.natural_key == "message:wamid.x3"]


def test_a_number_is_bound_to_its_waba_by_the_first_signed_webhook_and_never_moved_by_a_writer(
        world: World) -> None:  # noqa: F811
    with world.archive.engine.connect() as conn:
        assert stream_tenant(conn, PNID_B) == WABA_B and stream_tenant(conn, p.PNID) == p.WABA
        evidence = conn.execute(sa.select(stream_tenants.c.evidence).where(stream_tenants.c.stream == PNID_B)).scalar()
    assert evidence.startswith("webhook:")
    # a later signed webhook naming the number under another WABA does not move it
    moved = json.loads(p.inbound(p.text("wamid.mv1", ALICE, T + 950, "hello")))
    moved["entry"][0]["id"] = "999999999999999"
    moved["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = PNID_B
    ingest(world.archive, json.dumps(moved).encode())
    with world.archive.engine.connect() as conn:
        assert stream_tenant(conn, PNID_B) == WABA_B
    # tenant B's auditor sees their number's records; tenant A's never does, whatever a row says
    other = {"Authorization": f"Bearer {world.other}"}
    assert world.client.get("/api/v1/violations", headers=other).status_code == 200
    a_violations = world.get("/api/v1/violations").json()["violations"]
    assert all(v["stream"] != PNID_B for v in a_violations)
