"""The whole fixture corpus, replayed end to end over HTTP with duplicates and in shuffled order.

For every payload: the sealed typed records (read back from the Parquet in SeaweedFS) are
exactly the ones tests/test_kinds.py expects, and the original body is re-created byte for
byte from the archive after decryption. Plus: duplicated, reordered and out-of-order
deliveries (status before message, echo before history) give one record per event.
"""

from __future__ import annotations

import hashlib
import json
import random

import sqlalchemy as sa
from fastapi.testclient import TestClient

from archiver.db import events, inbox_deliveries
from audit.recreate import recreate_body
from strongroom import payloads as p
from strongroom.app import create_app
from strongroom.runtime import Archive
from tests.conftest import FIXTURES, open_record, sealed_records, sign
from tests.test_kinds import CASES

CORPUS = {f.stem: f.read_bytes() for f in sorted((FIXTURES / "webhooks").glob("*.json"))}
UNTYPED = ("change", "envelope", "identity")


def _post_all(archive: Archive, bodies: list[bytes]) -> None:
    client = TestClient(create_app(archive))
    for body in bodies:
        r = client.post("/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": sign(body)})
        assert r.status_code == 200, r.text


def test_the_corpus_covers_every_kind_and_every_payload_has_expectations() -> None:
    assert len(CORPUS) >= 40
    assert set(CORPUS) == set(CASES)  # a new payload needs its expected typed events
    fields = {f for body in CORPUS.values() for f in _fields(body)}
    assert fields >= {"messages", "smb_message_echoes", "history", "smb_app_state_sync", "user_preferences",
                      "message_template_status_update", "message_template_quality_update", "template_category_update",
                      "message_template_components_update", "account_update", "phone_number_quality_update",
                      "phone_number_name_update", "account_review_update", "security", "standby", "calls"}
    types = {t[3] for cases in CASES.values() for t in cases if t[0] == "message"}
    assert types >= {"text", "image", "video", "audio", "document", "sticker", "location", "contacts", "interactive",
                     "button", "reaction", "order", "system", "unsupported", "edit", "revoke", "media_placeholder"}


def _fields(body: bytes) -> set[str]:
    doc = json.loads(body)
    return {c["field"] for e in doc["entry"] for c in e["changes"]}


def test_the_corpus_replayed_end_to_end(archive: Archive) -> None:
    deliveries = list(CORPUS.values()) * 2  # Meta redelivers
    random.Random(20261126).shuffle(deliveries)
    _post_all(archive, deliveries)
    archive.process_pending()

    recs = sealed_records(archive)
    assert len({(r["stream"], r["natural_key"]) for r in recs}) == len(recs)  # one record per event
    by_key = {(r["stream"], r["natural_key"]): r for r in recs}
    by_body: dict[str, list[dict]] = {}  # type: ignore[type-arg]
    for r in recs:
        by_body.setdefault(r["envelope_sha256"], []).append(r)

    for name, body in CORPUS.items():
        sha = hashlib.sha256(body).hexdigest()
        mine = by_body[sha]
        typed = sorted((r["kind"], r["origin"], r["direction"], r["type"], r["status"], r["modelled"])
                       for r in mine if r["kind"] not in UNTYPED)
        assert typed == sorted(CASES[name], key=str), name
        envelopes = [r for r in mine if r["kind"] == "envelope"]
        assert envelopes, name
        for env in envelopes:  # one per stream the body touched; each re-creates the whole body
            assert recreate_body(env, by_key, lambda r: open_record(archive, r)) == body, name

    with archive.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(inbox_deliveries)).scalar_one() == len(deliveries)
    report = archive.verifier().verify(expected_sizes=archive.expected_sizes())
    assert report.ok, [str(f) for f in report.failures]


def test_reordered_and_duplicated_deliveries_give_one_record_per_event(archive: Archive) -> None:
    t, alice = 1_764_000_000, "16505551234"
    message = p.inbound(p.text("wamid.r1", alice, t, "hello"))
    reaction = p.inbound({"from": alice, "id": "wamid.r2", "timestamp": str(t + 5), "type": "reaction",
                          "reaction": {"message_id": "wamid.r1", "emoji": "\U0001f44d"}})
    read = p.statuses(("wamid.api7", alice, "read", t + 30))
    delivered = p.statuses(("wamid.api7", alice, "delivered", t + 20))
    echo = p.echo("wamid.e7", alice, t + 40, "sent in the app")
    history = p.history_chunk(0, 1, 100, {alice: [
        {"from": p.BUSINESS, "to": alice, "id": "wamid.e7", "timestamp": str(t + 40), "type": "text",
         "text": {"body": "sent in the app"}, "history_context": {"status": "READ"}}]})
    # reaction before its message, read before delivered, echo before the history import, all twice
    _post_all(archive, [reaction, read, echo, message, history, delivered, read, reaction, history, echo])
    archive.process_pending()

    with archive.engine.connect() as conn:
        rows = conn.execute(sa.select(events.c.kind, events.c.wamid, events.c.origin, events.c.status,
                                      events.c.event_time).where(events.c.kind.in_(["message", "status"]))).all()
    messages = sorted((r.wamid, r.origin) for r in rows if r.kind == "message")
    assert messages == [("wamid.e7", "app"), ("wamid.r1", "api"), ("wamid.r2", "api")]  # live capture kept
    sts = sorted((r.event_time, r.status) for r in rows if r.kind == "status")
    assert [s for _, s in sts] == ["delivered", "read"]  # final state by WhatsApp's time, not arrival
    # both raw deliveries of the app message are still evidence: echo and history change records
    with archive.engine.connect() as conn:
        fields = conn.execute(sa.select(events.c.field).where(events.c.kind == "change")).scalars().all()
    assert sorted(fields).count("history") == 1 and sorted(fields).count("smb_message_echoes") == 1
    assert archive.sealer().seal_all() == 0  # everything already sealed
    report = archive.verifier().verify(expected_sizes=archive.expected_sizes())
    assert report.ok, [str(f) for f in report.failures]

