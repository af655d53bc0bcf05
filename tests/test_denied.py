"""Denied access is evidence (issue 16, item 5): every refused request is counted and sealed on the
audit stream, and a flood of them seals a bounded number of events."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from archiver.db import events
from audit.denied import DENIED_KIND, DeniedLog
from tests.test_api import World, world  # noqa: F401  (the module's archive and tokens)


def _denied(w: World) -> list[dict[str, Any]]:
    w.client.app.state.denied.flush()  # type: ignore[attr-defined]
    with w.archive.engine.connect() as conn:
        rows = conn.execute(sa.select(events).where(events.c.kind == DENIED_KIND).order_by(events.c.id)).all()
    return [json.loads(w.archive.keyring.open_record(r))["details"] for r in rows]


def test_each_kind_of_refusal_is_sealed_once_with_who_where_and_why(world: World) -> None:  # noqa: F811
    before = len(_denied(world))
    c = world.client
    assert c.get("/api/v1/search", params={"q": "x"}).status_code == 401  # no credential
    assert c.get("/api/v1/search", params={"q": "x"}, headers={"Authorization": "Bearer sr_forged"}).status_code == 401
    admin = {"Authorization": f"Bearer {world.tokens['admin']}"}
    assert c.get("/api/v1/search", params={"q": "x"}, headers=admin).status_code == 403  # an admin reads no content
    other = {"Authorization": f"Bearer {world.other}"}  # tenant B's auditor asks for a record of tenant A
    r = c.get("/api/v1/records/1122334455667/0", headers=other)
    assert r.status_code == 404
    bad_otp = c.post("/api/v1/auth/session", json={"name": "nobody-here", "password": "wrong-password",
                                                   "otp": "000000"})
    assert bad_otp.status_code == 401
    found = _denied(world)[before:]
    reasons = sorted((d["reason"], d["route"].split(" ")[1]) for d in found)
    assert ("unauthenticated", "/api/v1/search") in reasons
    assert ("forbidden", "/api/v1/search") in reasons
    assert ("not_found", "/api/v1/records/{stream}/{seq}") in reasons
    assert ("unauthenticated", "/api/v1/auth/session") in reasons
    assert len(found) == 5, found  # each once
    whos = {d["who"] for d in found}
    assert "anonymous" in whos and "sign-in:nobody-here" in whos
    assert any(w.startswith("api_key:") and "forged" not in w for w in whos)  # a hash of what was presented
    assert all(d["count"] == 1 and d["address"] for d in found)
    assert not any("wrong-password" in json.dumps(d) for d in found)
    # the audit-trail route shows them
    got = world.get("/api/v1/audit-trail", role="regulator", limit=10000)
    assert got.status_code == 200, got.text
    trail = got.json()
    assert any(e.get("kind") == DENIED_KIND for e in trail["entries"]), trail


def test_a_flood_of_refusals_seals_a_bounded_number_of_events(world: World) -> None:  # noqa: F811
    before = len(_denied(world))
    for i in range(700):  # a distinct forged token each time, from one address (more than max_keys)
        world.client.get("/api/v1/search", params={"q": "x"}, headers={"Authorization": f"Bearer sr_{i:06d}"})
    found = _denied(world)[before:]
    assert sum(d["count"] for d in found) == 700
    assert len(found) <= 2 * 500 + 1  # max_keys distinct, then per address
    assert any(d["reason"] == "many" for d in found)


def test_the_log_bounds_what_any_number_of_notes_can_seal() -> None:
    sealed: list[dict[str, object]] = []
    log = DeniedLog(sealed.extend, window=3600, max_keys=50)
    for i in range(10_000):
        log.note(f"token:{i}", f"203.0.113.{i % 200}", "GET /api/v1/search", "unauthenticated")
    log.flush()
    assert sum(int(str(d["count"])) for d in sealed) == 10_000
    assert len(sealed) <= 2 * 50 + 1
    assert any(d["reason"] == "overflow" for d in sealed)
    log.close()


def test_a_failed_write_keeps_the_counts_for_the_next_flush() -> None:
    calls: list[int] = []

    def write(batch: list[dict[str, object]]) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("audit stream away")

    log = DeniedLog(write, window=3600)
    log.note("a", "1.2.3.4", "GET /x", "forbidden")
    assert log.flush() == 0 and log.flush() == 1
    log.close()


def test_a_served_log_is_flushed_by_its_timer_not_by_the_request() -> None:
    import threading
    import time

    sealed: list[tuple[str, dict[str, object]]] = []
    log = DeniedLog(lambda batch: sealed.extend((threading.current_thread().name, d) for d in batch), window=0.2)
    log.start()
    log.note("anonymous", "198.51.100.9", "GET /api/v1/search", "unauthenticated")
    time.sleep(0.1)
    log.note("anonymous", "198.51.100.9", "GET /api/v1/search", "unauthenticated")
    deadline = time.monotonic() + 5
    while not sealed and time.monotonic() < deadline:
        time.sleep(0.05)
    log.close()
    assert [(name, d["count"]) for name, d in sealed] == [("denied-log", 2)]
