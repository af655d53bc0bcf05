"""The receiver: handshake, signature over raw bytes, durable inbox, redelivery, size limit."""

from __future__ import annotations

import json
from collections.abc import Callable

import sqlalchemy as sa
from fastapi.testclient import TestClient

from archiver.db import inbox, inbox_deliveries
from strongroom.app import create_app
from strongroom.runtime import Archive
from tests.conftest import VERIFY_TOKEN, sign

URL = "/webhooks/whatsapp"


def _client(archive: Archive) -> TestClient:
    return TestClient(create_app(archive))


def _count(archive: Archive, table: sa.Table) -> int:
    with archive.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_verification_handshake(archive: Archive) -> None:
    c = _client(archive)
    ok = c.get(URL, params={"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"})
    assert ok.status_code == 200 and ok.text == "1158201444"
    bad = c.get(URL, params={"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "x"})
    assert bad.status_code == 403 and "x" not in bad.text


def test_unsigned_and_wrongly_signed_bodies_are_rejected_and_never_stored(
    archive: Archive, webhook_body: Callable[[str], bytes]
) -> None:
    body = webhook_body("text_bsuid")
    c = _client(archive)
    assert c.post(URL, content=body).status_code == 401
    assert c.post(URL, content=body, headers={"X-Hub-Signature-256": sign(body, "other-secret")}).status_code == 401
    assert c.post(URL, content=body, headers={"X-Hub-Signature-256": "md5=abc"}).status_code == 401
    tampered = body.replace(b"Body Text", b"Body Texx")
    r = c.post(URL, content=tampered, headers={"X-Hub-Signature-256": sign(body)})
    assert r.status_code == 401 and r.json()["detail"] == "X-Hub-Signature-256 does not match the body"
    assert r.headers["content-type"] == "application/problem+json"
    assert _count(archive, inbox) == 0 and _count(archive, inbox_deliveries) == 0


def test_signature_is_checked_over_the_exact_unicode_escaped_bytes(
    archive: Archive, webhook_body: Callable[[str], bytes]
) -> None:
    body = webhook_body("unicode_escaped")
    assert b"\\u00fc" in body  # Meta escapes non-ASCII; we must not re-serialise
    reserialised = json.dumps(json.loads(body), ensure_ascii=False).encode()
    c = _client(archive)
    assert c.post(URL, content=reserialised, headers={"X-Hub-Signature-256": sign(body)}).status_code == 401
    assert c.post(URL, content=body, headers={"X-Hub-Signature-256": sign(body)}).status_code == 200


def test_redelivery_is_stored_once_and_every_attempt_logged(
    archive: Archive, webhook_body: Callable[[str], bytes]
) -> None:
    body = webhook_body("statuses")
    c = _client(archive)
    first = c.post(URL, content=body, headers={"X-Hub-Signature-256": sign(body)})
    again = c.post(URL, content=body, headers={"X-Hub-Signature-256": sign(body)})
    assert first.json() == {"ok": True, "duplicate": False}
    assert again.json() == {"ok": True, "duplicate": True}
    assert _count(archive, inbox) == 1 and _count(archive, inbox_deliveries) == 2
    with archive.engine.connect() as conn:
        row = conn.execute(sa.select(inbox)).one()
    assert row.deliveries == 2 and archive.inbox.read_body(row) == body
    assert body not in row.ciphertext  # encrypted at rest


def test_body_over_the_limit_gets_413_and_is_not_stored(make_settings, webhook_body) -> None:  # type: ignore[no-untyped-def]
    from strongroom.runtime import open_archive

    a = open_archive(make_settings(max_body_bytes=100))
    try:
        body = webhook_body("text_bsuid")
        r = _client(a).post(URL, content=body, headers={"X-Hub-Signature-256": sign(body)})
        assert r.status_code == 413 and "exceeds the limit of 100" in r.json()["detail"]
        assert _count(a, inbox) == 0
    finally:
        a.close()


def test_health_is_the_only_other_unauthenticated_route(archive: Archive) -> None:
    app = create_app(archive)
    paths = sorted(_paths(app.routes))
    # everything else is the auditor API, each route behind a bearer token (tests/test_api.py), or the
    # console, each page behind a cookie session but its sign-in and static files (tests/test_console.py)
    assert [p for p in paths if not p.startswith(("/api/v1/", "/console/"))] == ["/healthz", URL]
    c = TestClient(app)
    assert c.get("/healthz").json() == {"status": "ok"}
    for probe in ("/docs", "/openapi.json", "/redoc", "/debug", "/env", "/heapdump"):
        assert c.get(probe).status_code == 404
    assert c.get("/healthz").headers["x-content-type-options"] == "nosniff"


def _paths(routes: list) -> set[str]:  # type: ignore[type-arg]
    """Every route path, including those of included routers (however FastAPI nests them)."""
    found: set[str] = set()
    for r in routes:
        if getattr(r, "path", ""):
            found.add(r.path)
        nested = getattr(r, "routes", None) or getattr(getattr(r, "original_router", None), "routes", None)
        found |= _paths(nested or [])
    return found


def test_group_commit_counts_a_body_delivered_twice_in_one_batch(
    archive: Archive, webhook_body: Callable[[str], bytes]
) -> None:
    body, other = webhook_body("statuses"), webhook_body("text_bsuid")
    rows = [archive.inbox.prepare(b, sign(b)) for b in (body, other, body)]
    receipts = archive.inbox.commit(rows)
    assert [r.duplicate for r in receipts] == [False, False, True]
    assert receipts[0].inbox_id == receipts[2].inbox_id != receipts[1].inbox_id
    again = archive.inbox.commit([archive.inbox.prepare(body, sign(body))])
    assert again[0].duplicate and again[0].inbox_id == receipts[0].inbox_id
    with archive.engine.connect() as conn:
        assert conn.execute(sa.select(inbox.c.deliveries).where(inbox.c.id == receipts[0].inbox_id)).scalar_one() == 3
    assert _count(archive, inbox) == 2 and _count(archive, inbox_deliveries) == 4
