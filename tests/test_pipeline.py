"""End to end on the real components: signed webhook → inbox → WORM Parquet → verify → query."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from archiver.db import events, inbox
from archiver.identity import IdentityBook
from archiver.merkle import verify_consistency, verify_inclusion
from archiver.proofs import ProofService
from audit.query import QueryError
from audit.recreate import recreate_body
from strongroom import payloads
from strongroom.app import create_app
from strongroom.runtime import Archive, configure_logging
from tests.conftest import open_record, sealed_records, sign

CANARY = "CANARY-7f3a91-d\u00e9j\u00e0-vu-\U0001f512"


def _post(client: TestClient, body: bytes) -> None:
    r = client.post("/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": sign(body)})
    assert r.status_code == 200, r.text


def _canary_body() -> bytes:
    """Meta-style body: non-ASCII escaped as \\uXXXX, exactly as Meta signs it."""
    doc = {"object": "whatsapp_business_account", "entry": [{"id": "1234567890987654321", "changes": [{"value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        "contacts": [{"profile": {"name": "Canary Person"}, "wa_id": "16505550199"}],
        "messages": [{"from": "16505550199", "id": "wamid.CANARY1", "timestamp": "1739230955", "type": "text",
                      "text": {"body": CANARY}}]}, "field": "messages"}]}]}
    return json.dumps(doc, separators=(",", ":")).encode()


def _canary_variants() -> list[bytes]:
    escaped = json.dumps(CANARY)[1:-1].encode()  # \u00e9… as Meta sends it
    return [CANARY.encode(), escaped, CANARY.encode("utf-16-le"), b"CANARY-7f3a91"]


def test_signed_webhook_is_sealed_verified_queryable_and_never_plaintext(
    archive: Archive, tmp_path: Path, webhook_body: Callable[[str], bytes]
) -> None:
    log_file = tmp_path / "service.log"
    body = _canary_body()
    with log_file.open("w") as log_stream:
        configure_logging("DEBUG", log_stream)
        try:
            client = TestClient(create_app(archive))
            _post(client, body)
            _post(client, body)  # Meta redelivers
            for name in ("statuses", "multi_entry", "unknown_field"):
                _post(client, webhook_body(name))
            assert archive.process_pending() > 0
            assert archive.process_pending() == 0  # idempotent: nothing left, nothing duplicated
        finally:
            configure_logging("INFO")

    # verify passes on what is in SeaweedFS
    report = archive.verifier().verify(expected_sizes=archive.expected_sizes())
    assert report.ok, [str(f) for f in report.failures]
    assert {s.stream for s in report.streams} >= {"106540352242922", "1122334455667", "waba-9999999999"}

    # query finds the message by its metadata
    res = archive.query_engine().query(
        "SELECT stream, seq, natural_key, subject_key_id, nonce, content, type, direction, origin "
        "FROM records WHERE wamid = 'wamid.CANARY1' AND kind = 'message'")
    assert len(res.rows) == 1
    row = dict(zip(res.columns, res.rows[0], strict=True))
    assert (row["type"], row["direction"], row["origin"]) == ("text", "inbound", "api")
    # its text decrypts with the subject's key to exactly what was sent
    plain = archive.keyring.open_content(row["stream"], row["natural_key"], row["subject_key_id"],
                                         row["nonce"], row["content"])
    assert json.loads(plain)["message"]["text"]["body"] == CANARY
    subject = IdentityBook(archive.engine).at("wa", archive.keyring.blind_index("wa", "16505550199"))
    assert row["subject_key_id"] == "subj:" + subject

    # one record per event despite the redelivery; unknown fields kept and flagged
    recs = sealed_records(archive)
    keys = [(r["stream"], r["natural_key"]) for r in recs]
    assert len(keys) == len(set(keys))
    kinds = {(r["field"], r["modelled"]) for r in recs if r["kind"] == "change"}
    assert ("calls", False) in kinds and ("message_template_status_update", True) in kinds
    image = [r for r in recs if r["wamid"] == "wamid.img1"]
    assert image and image[0]["modelled"] is True and image[0]["type"] == "image"
    template = [r for r in recs if r["kind"] == "template_event"]
    assert [(t["template_name"], t["template_language"], t["status"]) for t in template] == [
        ("abandoned_cart", "en", "APPROVED")]

    # the original body is re-created byte for byte from sealed records
    env = next(r for r in recs if r["kind"] == "envelope" and r["stream"] == "106540352242922")
    by_key = {(r["stream"], r["natural_key"]): r for r in recs}
    assert recreate_body(env, by_key, lambda r: open_record(archive, r)) == body

    # the inbox copy is dropped once everything from it is sealed
    with archive.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(inbox.c.ciphertext.is_not(None))).scalar_one() == 0
        assert conn.execute(sa.select(sa.func.count()).where(events.c.segment_id.is_(None))).scalar_one() == 0

    # canary: no byte of the objects, the database or the logs holds the text
    persisted: dict[str, bytes] = {f"s3:{k}": archive.store.get(k) for k in archive.store.list_keys("")}
    persisted["log"] = log_file.read_bytes()
    for path in Path(archive.settings.data_dir).rglob("*"):
        if path.is_file():
            persisted[str(path)] = path.read_bytes()
    persisted.update(_database_bytes(archive))
    assert len(persisted) > 5
    for name, data in persisted.items():
        for variant in _canary_variants():
            assert variant not in data, f"plaintext canary found in {name}"


def _database_bytes(archive: Archive) -> dict[str, bytes]:
    """Every stored value of every table (PostgreSQL) or the database files (SQLite)."""
    url = archive.settings.sql_url()
    if url.startswith("sqlite"):
        db = Path(url.removeprefix("sqlite:///"))
        return {str(p): p.read_bytes() for p in db.parent.glob(db.name + "*")}
    out = {}
    with archive.engine.connect() as conn:
        for table in sa.MetaData().reflect(bind=conn) or sa.inspect(conn).get_table_names():
            buf = io.BytesIO()
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                for v in row:
                    buf.write(v if isinstance(v, bytes | memoryview) else str(v).encode())
            out[f"pg:{table}"] = buf.getvalue()
    return out


def test_served_proofs_verify_against_signed_checkpoints(
    archive: Archive, webhook_body: Callable[[str], bytes]
) -> None:
    client = TestClient(create_app(archive))
    sizes = []
    for i in range(3):
        body = webhook_body("text_bsuid").replace(b"wamid.xyzxyz", f"wamid.p{i}".encode())
        _post(client, body)
        archive.process_pending()
        sizes.append(archive.expected_sizes()["1122334455667"])
    from archiver.checkpoint import SignedCheckpoint

    cps = [SignedCheckpoint.from_json(archive.store.get(k)) for k in
           archive.store.list_keys("checkpoints/stream=1122334455667/")]
    assert [c.checkpoint.tree_size for c in cps] == sizes
    proofs = ProofService(archive.engine)
    for cp in cps:
        cp.verify(archive.public_key)
        size, root = cp.checkpoint.tree_size, bytes.fromhex(cp.checkpoint.root_hash)
        for seq in range(size):
            verify_inclusion(seq, size, proofs.leaf_hash("1122334455667", seq),
                             proofs.inclusion("1122334455667", seq, size), root)
    for a, b in zip(cps, cps[1:], strict=False):
        verify_consistency(a.checkpoint.tree_size, b.checkpoint.tree_size,
                           proofs.consistency("1122334455667", a.checkpoint.tree_size, b.checkpoint.tree_size),
                           bytes.fromhex(a.checkpoint.root_hash), bytes.fromhex(b.checkpoint.root_hash))


@pytest.mark.parametrize("garbage", [b"not json at all", b'{"entry": 5}', b"\xff\xfe"])
def test_signed_body_of_unknown_shape_is_kept_raw_and_flagged(archive: Archive, garbage: bytes) -> None:
    client = TestClient(create_app(archive))
    _post(client, garbage)
    archive.process_pending()
    recs = sealed_records(archive)
    assert [(r["stream"], r["kind"], r["modelled"]) for r in recs] == [("unrouted", "unparsed", False)]
    r = recs[0]
    assert archive.keyring.open_record(r) == garbage


def test_odd_but_signed_shapes_never_wedge_the_pipeline(archive: Archive) -> None:
    """Values that cannot be typed are nulled and flagged; the exact bytes are still sealed."""
    huge = "wamid." + "x" * 5000
    doc = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
        {"field": "messages", "value": {"metadata": "not-an-object", "messages": [{"id": "wamid.m1", "from": 5}]}},
        {"field": "messages", "value": {"metadata": {"phone_number_id": "106540352242922"},
                                        "messages": [{"id": huge, "from": "16505550000", "type": "t" * 500}],
                                        "statuses": [{"id": {"nested": True}, "status": ["read"]}]}},
    ]}]}
    body = json.dumps(doc).encode()
    _post(TestClient(create_app(archive)), body)
    assert archive.process_pending() > 0
    recs = sealed_records(archive)
    assert archive.verifier().verify(expected_sizes=archive.expected_sizes()).ok
    long_msg = [r for r in recs if r["kind"] == "message" and r["wamid"] is None]
    assert long_msg and long_msg[0]["modelled"] is False and long_msg[0]["type"] is None
    assert all(len(r["natural_key"]) <= 400 for r in recs)
    changes = [r for r in recs if r["kind"] == "change"]
    assert len(changes) == 2 and not any(r["modelled"] for r in changes)


@pytest.mark.parametrize("sql_url", ["postgresql"], indirect=True)
def test_a_body_the_database_refuses_never_wedges_the_others(archive: Archive) -> None:
    """A real refusal (a PostgreSQL trigger) on one body: the rest of its batch is archived and
    the refused body is kept whole as an `unparsed` record instead of blocking the inbox."""
    with archive.engine.begin() as conn:
        conn.execute(sa.text(
            "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN "
            "IF NEW.wamid = 'wamid.poison' THEN RAISE EXCEPTION 'refused' USING ERRCODE = '22001'; END IF; "
            "RETURN NEW; END $$ LANGUAGE plpgsql"))
        conn.execute(sa.text("CREATE TRIGGER refuse BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse_poison()"))
    for wamid in ("wamid.good1", "wamid.poison", "wamid.good2"):
        body = payloads.inbound(payloads.text(wamid, "16505550123", 1_764_000_000, "hi"))
        archive.inbox.receive(body, sign(body))
    archive.process_pending()
    with archive.engine.connect() as conn:
        kinds = conn.execute(sa.select(events.c.kind, events.c.wamid).where(
            events.c.kind.in_(["message", "unparsed"]))).all()
        pending = conn.execute(sa.select(sa.func.count()).where(inbox.c.state == "pending")).scalar_one()
    assert sorted(kinds, key=str) == sorted([("message", "wamid.good1"), ("message", "wamid.good2"),
                                             ("unparsed", None)], key=str)
    assert pending == 0


def test_a_nul_character_in_a_typed_value_is_flagged_not_fatal(archive: Archive) -> None:
    body = payloads.inbound({"from": "16505550123", "id": "wamid.nul", "timestamp": "1764000000",
                             "type": "te\u0000xt", "text": {"body": "x"}})
    archive.inbox.receive(body, sign(body))
    archive.process_pending()
    with archive.engine.connect() as conn:
        row = conn.execute(sa.select(events.c.type, events.c.modelled).where(events.c.wamid == "wamid.nul")).one()
    assert (row.type, row.modelled) == (None, False)


def test_queries_cannot_read_local_files_or_unlock_settings(archive: Archive, webhook_body: Callable[[str], bytes]) -> None:
    body = webhook_body("text_bsuid")
    archive.inbox.receive(body, sign(body))
    archive.process_pending()
    engine = archive.query_engine()
    assert engine.query("SELECT count(*) FROM records").rows[0][0] > 0
    for sql in ("SELECT * FROM read_csv('/etc/passwd')", "SET disabled_filesystems = ''",
                "SELECT * FROM read_text('" + str(archive.settings.key_path("kek")) + "')"):
        with pytest.raises(QueryError):
            engine.query(sql)


def test_verify_of_a_live_archive_accepts_growth_since_the_snapshot(archive: Archive) -> None:
    """Sizes are read from SQL before the store is listed; a worker sealing in between makes the
    store ahead of the snapshot, which is normal operation, not a finding (a store *behind* the
    database — a truncated copy — still is: tests/test_tamper.py)."""
    first = payloads.inbound(payloads.text("wamid.live1", "16505550123", 1_764_000_000, "one"))
    archive.inbox.receive(first, sign(first))
    archive.process_pending()
    snapshot = archive.expected_sizes()
    second = payloads.inbound(payloads.text("wamid.live2", "16505550123", 1_764_000_001, "two"))
    archive.inbox.receive(second, sign(second))
    archive.process_pending()
    assert archive.expected_sizes()[payloads.PNID] > snapshot[payloads.PNID]
    report = archive.verifier().verify(expected_sizes=snapshot)
    assert report.ok, [str(f) for f in report.failures]
    behind = {**snapshot, payloads.PNID: archive.expected_sizes()[payloads.PNID] + 1}
    assert not archive.verifier().verify(expected_sizes=behind).ok


def test_the_migrations_build_exactly_the_declared_schema() -> None:
    """Alembic's revisions and the tables the code declares agree (PostgreSQL): a table, column or
    index added on one side only is named here, before it surprises an upgrade."""
    import importlib
    import pkgutil

    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from archiver.db import metadata, migrate
    from tests.conftest import pg_database

    for pkg in ("archiver", "audit", "policies", "review", "exporters", "strongroom"):  # every module that declares tables
        for info in pkgutil.iter_modules(importlib.import_module(pkg).__path__):
            if info.name not in ("__main__", "migrations"):
                importlib.import_module(f"{pkg}.{info.name}")
    with pg_database() as url:
        engine = sa.create_engine(url)
        try:
            migrate(engine)
            with engine.connect() as conn:
                assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        finally:
            engine.dispose()
