"""Identity over time: a reassigned number never pulls one person's messages onto another."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import sqlalchemy as sa

from archiver.db import events, identities
from archiver.identity import IdentityBook
from strongroom import payloads as p
from strongroom.runtime import Archive
from tests.conftest import ingest, record_json

T0 = 1_760_000_000
ALICE_OLD, ALICE_NEW = "16505550001", "16505550002"


def _subject_of(archive: Archive, wamid: str) -> str:
    with archive.engine.connect() as conn:
        return conn.execute(sa.select(events.c.conversation).where(
            events.c.wamid == wamid, events.c.kind == "message")).scalar_one()


def test_changed_number_moves_the_person_and_frees_the_old_number(archive: Archive) -> None:
    ingest(archive,
            p.inbound(p.text("wamid.a1", ALICE_OLD, T0 + 100, "hello from alice")),
            p.system_changed_number("wamid.sys1", ALICE_OLD, ALICE_NEW, T0 + 200),
            p.inbound(p.text("wamid.a2", ALICE_NEW, T0 + 300, "alice again, new number")),
            p.inbound(p.text("wamid.b1", ALICE_OLD, T0 + 400, "I am the number's new owner")),
            # the history import arrives later but reaches back before the change
            p.history_chunk(1, 1, 100, {ALICE_OLD: [p.text("wamid.a0", ALICE_OLD, T0 - 86400, "old chat")],
                                        ALICE_NEW: [p.text("wamid.c0", ALICE_NEW, T0 - 86400, "prev owner")]}))
    alice = _subject_of(archive, "wamid.a1")
    assert _subject_of(archive, "wamid.sys1") == alice
    assert _subject_of(archive, "wamid.a2") == alice
    assert _subject_of(archive, "wamid.a0") == alice
    assert _subject_of(archive, "wamid.b1") not in (alice, None)  # reassigned number: someone else
    assert _subject_of(archive, "wamid.c0") not in (alice, None, _subject_of(archive, "wamid.b1"))

    book, bi = IdentityBook(archive.engine), archive.keyring.blind_index

    def at(ts: int) -> datetime:
        return datetime.fromtimestamp(ts, UTC)

    assert book.at("wa", bi("wa", ALICE_OLD), at(T0 + 199)) == alice
    assert book.at("wa", bi("wa", ALICE_NEW), at(T0 + 200)) == alice
    assert book.at("wa", bi("wa", ALICE_OLD), at(T0 + 200)) == _subject_of(archive, "wamid.b1")
    assert book.at("wa", bi("wa", ALICE_NEW), at(T0 + 199)) == _subject_of(archive, "wamid.c0")

    # each person has their own data key: erasing the new owner can never touch alice's records
    with archive.engine.connect() as conn:
        keys = dict(conn.execute(sa.select(events.c.wamid, events.c.subject_key_id).where(events.c.kind == "message")).all())
    assert keys["wamid.a1"] == "subj:" + alice and keys["wamid.b1"] != keys["wamid.a1"]

    # the mapping is evidence: sealed identity records, identifier only inside the ciphertext
    archive.sealer().seal_all()
    with archive.engine.connect() as conn:
        recs = conn.execute(sa.select(events).where(events.c.kind == "identity")).all()
        n_bindings = conn.execute(sa.select(sa.func.count()).select_from(identities)).scalar_one()
    assert {r.status for r in recs} == {"bound", "ended"}
    ended = [record_json(archive, r) for r in recs if r.status == "ended"]
    assert {(e["identifier"], e["subject"], e["valid_to"]) for e in ended} >= {
        (ALICE_OLD, alice, at(T0 + 200).isoformat())}
    assert all(ALICE_OLD not in (r.natural_key + (r.sender or "")) for r in recs)

    # the same system message redelivered inside another body changes nothing
    again = p.body(p.envelope(json.loads(p.system_changed_number("wamid.sys1", ALICE_OLD, ALICE_NEW, T0 + 200))
                              ["entry"][0]["changes"][0], p.change("messages", {"statuses": []})))
    ingest(archive, again)
    with archive.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(identities)).scalar_one() == n_bindings
        assert conn.execute(sa.select(sa.func.count()).where(events.c.kind == "identity")).scalar_one() == len(recs)
    archive.sealer().seal_all()
    report = archive.verifier().verify(expected_sizes=archive.expected_sizes())
    assert report.ok, [str(f) for f in report.failures]


def test_a_username_user_is_one_person_by_bsuid_and_later_by_phone(archive: Archive) -> None:
    bsuid = "US.13491208655302741918"
    only_bsuid = {"from_user_id": bsuid, "id": "wamid.u1", "timestamp": str(T0), "type": "text",
                  "text": {"body": "hi, I have a username"}}
    both = p.text("wamid.u2", "16505550009", T0 + 60, "now with my number", from_user_id=bsuid)
    ingest(archive, p.body(p.envelope(p.change("messages", {"messages": [only_bsuid]}))), p.inbound(both))
    assert _subject_of(archive, "wamid.u1") == _subject_of(archive, "wamid.u2")
    book = IdentityBook(archive.engine)
    assert book.at("wa", archive.keyring.blind_index("wa", "16505550009")) == _subject_of(archive, "wamid.u1")


def test_a_bsuid_change_keeps_the_person(archive: Archive) -> None:
    old, new = "US.1111", "US.2222"
    first = {"from_user_id": old, "id": "wamid.v1", "timestamp": str(T0), "type": "text", "text": {"body": "a"}}
    change = {"from_user_id": new, "id": "wamid.v2", "timestamp": str(T0 + 10), "type": "system",
              "system": {"body": "User changed user id", "type": "user_changed_user_id", "previous_user_id": old}}
    later = {"from_user_id": new, "id": "wamid.v3", "timestamp": str(T0 + 20), "type": "text", "text": {"body": "b"}}
    ingest(archive, *(p.body(p.envelope(p.change("messages", {"messages": [m]}))) for m in (first, change, later)))
    assert _subject_of(archive, "wamid.v1") == _subject_of(archive, "wamid.v2") == _subject_of(archive, "wamid.v3")
