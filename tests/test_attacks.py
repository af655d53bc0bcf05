"""The outside security review's attacks (issue 14), each performed against a running app and
asserted to fail safe. Each test would pass the attack on the code before its fix."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from archiver.db import events, stream_tenant, stream_tenants
from strongroom import payloads as p
from tests.conftest import ingest, sign
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


# -- finding 5: the query engine is read-only ------------------------------------------------------


def test_user_sql_cannot_write_reach_files_urls_or_other_prefixes(archive: Any) -> None:
    import http.server
    import threading

    import pytest

    from audit.query import QueryError

    ingest(archive, p.inbound(p.text("wamid.q1", ALICE, T, "hello")))
    hits: list[str] = []

    class Sink(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    engine = archive.query_engine()
    bucket = archive.store.bucket
    before = sorted(archive.store.list_keys(""))
    try:
        assert engine.query("SELECT count(*) FROM records").rows[0][0] >= 1  # reading the archive works
        for attack in (
            f"COPY (SELECT 1 AS x) TO 's3://{bucket}/records/stream=x/date=2026-01-01/forged.parquet'",
            "SELECT 1; DROP VIEW records",
            "SELECT count(*) FROM records; COPY (SELECT 1) TO '/tmp/sr-leak.csv'",
            "SELECT * FROM read_text('/etc/passwd')",
            f"SELECT * FROM read_text('http://127.0.0.1:{server.server_port}/ssrf')",
            f"SELECT * FROM read_csv('http://127.0.0.1:{server.server_port}/ssrf.csv')",
            f"SELECT * FROM read_blob('s3://{bucket}/checkpoints/*')",
            "ATTACH '/tmp/sr-attack.duckdb' AS x",
            "SET enable_external_access = true",
            "INSTALL httpfs",
            "CREATE TABLE t AS SELECT 1",
        ):
            with pytest.raises(QueryError):
                engine.query(attack)
    finally:
        server.shutdown()
    assert hits == [], "a query reached a URL"
    assert sorted(archive.store.list_keys("")) == before, "a query wrote to the store"


def test_a_saved_query_hold_is_checked_before_it_is_stored_and_a_broken_one_never_stops_sealing(
        archive: Any) -> None:
    import threading
    import time

    import pytest

    from archiver.errors import InvalidInput
    from policies.holds import Scope, holds
    from strongroom.runtime import Worker

    ingest(archive, p.inbound(p.text("wamid.h1", ALICE, T, "hello")))
    for bad in ("no_such_column = 1", "1=1; COPY (SELECT 1) TO 'x.csv'", "1=1) OR (1=1"):
        with pytest.raises(InvalidInput):
            archive.holds().place("M-bad", Scope(query=bad), "test")
    with archive.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(holds)).scalar_one() == 0
    # a broken hold stored by an older version: the worker's retention duty fails, sealing goes on
    with archive.engine.begin() as conn:
        conn.execute(holds.insert().values(id="01BROKENHOLD0000000000000X", matter="legacy", placed_by="old",
                                           scope=json.dumps({"query": "no_such_column = 1"}), placed_at=sa.func.now()))
    body = p.inbound(p.text("wamid.h2", ALICE, T + 5, "after the broken hold"))
    archive.inbox.receive(body, sign(body))
    worker = Worker(archive, interval=0.1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with archive.engine.connect() as conn:
                if conn.execute(sa.select(events.c.seq).where(events.c.wamid == "wamid.h2")).scalar() is not None:
                    break
            time.sleep(0.2)
        else:
            pytest.fail("a broken hold stopped sealing")
    finally:
        worker.stopping.set()
        thread.join(timeout=30)
    assert "retention" in worker._retry_at  # the failing duty waits before it is tried again


# -- finding 10: crafted input gives a clear 4xx, never a 500 -------------------------------------


def test_crafted_input_is_refused_with_a_4xx_never_a_500(world: World) -> None:  # noqa: F811
    import base64

    c = world.client
    crafted = [
        ("GET", "/api/v1/search", {"q": "sent:9999-12-31"}),
        ("GET", "/api/v1/search", {"q": "sent:0001-01-01..9999-12-31"}),
        ("GET", "/api/v1/search", {"q": "trade", "from": "9999-12-31T23:59:59-01:00"}),
        ("GET", "/api/v1/search", {"q": "trade", "from": "0001-01-01T00:00:00+01:00"}),
        ("GET", "/api/v1/search", {"q": "trade", "cursor": base64.urlsafe_b64encode(b"[1e400, 1]").decode()}),
        ("GET", "/api/v1/search", {"q": "trade", "cursor": base64.urlsafe_b64encode(b'{"a": [1, 2]}').decode()}),
        ("GET", "/api/v1/search", {"q": "(" * 300 + "trade" + ")" * 300}),
        ("GET", "/api/v1/search", {"q": "NOT " * 500 + "trade"}),
        ("GET", "/api/v1/audit-trail", {"from": "9999-12-31T23:59:59-01:00"}),
        ("GET", "/api/v1/ledgers/templates", {"tenant": p.WABA, "name": "x", "language": "en",
                                              "at": "0001-01-01T00:00:00+14:00"}),
    ]
    for method, path, params in crafted:
        role = "regulator" if "audit-trail" in path else "auditor"
        r = c.request(method, path, params=params, headers={"Authorization": f"Bearer {world.tokens[role]}"})
        assert r.status_code < 500, (path, params, r.status_code, r.text[:200])  # an answer or a clear refusal
        assert r.status_code == 200 or r.headers["content-type"] == "application/problem+json"
    # the largest id a route accepts is recorded in its access event (RFC 8785 integers stop at 2^53)
    r = world.get("/api/v1/audit-trail", "regulator", after=2**63 - 1)
    assert r.status_code == 200 and r.json()["entries"] == []
    ingest_key = {"Authorization": f"Bearer {world.tokens['ingest']}"}
    bad_type = {**p.send("wamid.crafted1", ALICE, T + 1000), "request": {"to": ALICE, "type": "\ud800"}}
    r = c.post("/api/v1/send-log", headers={**ingest_key, "Content-Type": "application/json"},
               content=json.dumps({"items": [bad_type]}).encode())
    assert r.status_code == 400, r.text
    # unauthenticated: a signature header with a byte that is not ASCII
    r = c.post("/webhooks/whatsapp", content=b"{}", headers=[(b"X-Hub-Signature-256", b"sha256=\xff\xfe")])
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"


# -- finding 7: sign-in throttling holds, cannot be turned against users, bounds memory -----------


def test_sign_in_limits_ignore_forged_forwarded_for_and_hashing_is_bounded(world: World) -> None:  # noqa: F811
    import threading

    from fastapi.testclient import TestClient

    from strongroom.app import create_app

    app = create_app(world.archive)
    client = TestClient(app)
    codes = [client.post("/api/v1/auth/session", json={"name": "victim", "password": "guess", "otp": "123456"},
                         headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(12)]
    assert codes.count(401) == 10 and codes[-1] == 429  # a rotating header is not a new address

    # behind a configured proxy, the header is the client: one address cannot exhaust another's budget
    world.archive.settings.trusted_proxies = "testclient"
    try:
        proxied = TestClient(create_app(world.archive))
        for _ in range(12):
            proxied.post("/api/v1/auth/session", json={"name": "victim", "password": "guess", "otp": "123456"},
                         headers={"X-Forwarded-For": "198.51.100.7"})
        other = proxied.post("/api/v1/auth/session", json={"name": "victim", "password": "guess", "otp": "123456"},
                             headers={"X-Forwarded-For": "198.51.100.8"})
        assert other.status_code == 401  # the attacker's address is throttled, the victim's is not
    finally:
        world.archive.settings.trusted_proxies = None

    # 50 sign-ins at once: at most `login_hash_concurrency` scrypt hashes (32 MiB each) at a time
    app.state.login_limiter.rate = 10_000
    statuses: list[int] = []

    def attempt(i: int) -> None:
        r = client.post("/api/v1/auth/session", json={"name": f"user-{i}", "password": "x" * 20, "otp": "123456"})
        statuses.append(r.status_code)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    hashing = app.state.accounts.hashing
    assert statuses.count(401) == 50 and hashing.peak <= world.archive.settings.login_hash_concurrency


# -- finding 8: the bundle verifier cannot be fooled or exhausted ---------------------------------


def test_the_bundle_verifier_refuses_duplicate_entries_links_bombs_and_an_oversized_manifest(
        world: World, tmp_path: Any) -> None:  # noqa: F811
    import os
    import time
    import zipfile

    from archiver import crypto
    from exporters import verify_bundle as vb

    key = vb.load_public_key(crypto.public_key_pem(world.archive.public_key))
    real = tmp_path / "real.zip"
    real.write_bytes(world.get(f"/api/v1/exports/{world.export_id}/download").content)
    assert vb.verify(real, key) == []
    with zipfile.ZipFile(real) as z:
        entries = [(i, z.read(i)) for i in z.infolist()]

    def rezip(name: str, entries: list[tuple[Any, bytes]]) -> Any:
        out = tmp_path / name
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for info, data in entries:
                z.writestr(info if isinstance(info, zipfile.ZipInfo) else zipfile.ZipInfo(info), data)
        return out

    # two entries named records/records.jsonl: the forged one first (verified), the real one second
    forged = [(zipfile.ZipInfo("records/records.jsonl"), b'{"forged": true}\n')] + entries
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name: that is the attack
        duplicate = rezip("duplicate.zip", forged)
    assert any("two entries" in f for f in vb.verify(duplicate, key))

    # a link entry
    link = zipfile.ZipInfo("records/link")
    link.external_attr = (0o120777 << 16)
    assert any("not a regular file" in f for f in vb.verify(rezip("link.zip", [*entries, (link, b"/etc/passwd")]),
                                                                 key))

    # a 100 MiB manifest.json compressed to a few hundred kB: refused by its declared size, unread
    bomb = [(i, d) for i, d in entries if i.filename != "manifest.json"] + [
        (zipfile.ZipInfo("manifest.json"), b"0" * (100 * 1024 * 1024))]
    started = time.monotonic()
    assert any("manifest.json" in f and "more than" in f for f in vb.verify(rezip("bomb.zip", bomb), key))
    assert time.monotonic() - started < 10

    # a listed file swollen far past its manifest size: named, never read whole, never parsed
    swollen = [(i, d if i.filename != "records/records.jsonl" else d + b"0" * (64 * 1024 * 1024))
               for i, d in entries]
    started = time.monotonic()
    failures = vb.verify(rezip("swollen.zip", swollen), key)
    assert any(f.startswith("records/records.jsonl: content differs") for f in failures)
    assert time.monotonic() - started < 20

    # a directory bundle with a symbolic link in it
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(real) as z:
        z.extractall(unpacked)
    os.symlink("/etc/passwd", unpacked / "records" / "passwd")
    assert any("not a regular file" in f for f in vb.verify(unpacked, key))


# -- finding 6: a tenant's bundle holds only what its scope covers --------------------------------


def test_a_tenants_bundle_carries_no_other_tenants_activity_or_checkpoints(world: World, tmp_path: Any) -> None:  # noqa: F811
    import io
    import zipfile

    from archiver import crypto
    from exporters import verify_bundle as vb

    assert world.get("/api/v1/search", "regulator", q="trade OR secret").json()["total"] >= 2  # spans both tenants
    assert world.get("/api/v1/search", q="trade").json()["total"] >= 1  # tenant A's auditor
    hdr = {"Authorization": f"Bearer {world.other}"}  # tenant B's auditor
    assert world.client.get("/api/v1/search", params={"q": "secret"}, headers=hdr).json()["total"] == 1
    r = world.client.post("/api/v1/exports", json={"matter": "B-1"}, headers=hdr)
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    world.client.app.state.export_jobs.wait(job, 120)  # type: ignore[attr-defined]
    data = world.client.get(f"/api/v1/exports/{job}/download", headers=hdr).content
    (tmp_path / "b.zip").write_bytes(data)
    assert vb.verify(tmp_path / "b.zip", vb.load_public_key(crypto.public_key_pem(world.archive.public_key))) == []
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = z.namelist()
        trail = [json.loads(line) for line in z.read("audit/access_trail.jsonl").splitlines() if line.strip()]
    assert not [n for n in names if p.PNID in n], "tenant A's number is in tenant B's bundle"
    assert any(PNID_B in n for n in names if n.startswith("checkpoints/"))
    text = json.dumps(trail)
    assert p.PNID not in text and p.WABA not in text and "trade OR secret" not in text
    assert any(e.get("details", {}).get("query") == "withheld: the principal could see other tenants" for e in trail)


# -- finding 11: the low ones ----------------------------------------------------------------------


def test_low_findings_unknown_fields_token_lifetimes_proximity_schedule_and_file_modes(world: World) -> None:  # noqa: F811
    import stat
    import time as time_module
    from datetime import UTC, datetime
    from pathlib import Path

    from tests.test_api import oidc_token

    compliance = {"Authorization": f"Bearer {world.tokens['compliance']}"}
    r = world.client.post("/api/v1/holds", headers=compliance, json={"matter": "x", "streams": [p.PNID],
                                                                     "query": "1=1"})
    assert r.status_code == 422 and "query" in r.text  # an unknown field is reported, not ignored
    key = world.oidc_key

    def status(token: str) -> int:
        return world.client.get("/api/v1/holds", headers={"Authorization": f"Bearer {token}"}).status_code  # type: ignore[no-any-return]

    assert status(oidc_token(key)) == 200
    assert status(oidc_token(key, exp=int(time_module.time()) + 100 * 365 * 86400)) == 401  # a 100-year token
    assert status(oidc_token(key, sub="")) == 401 and status(oidc_token(key, sub="  ")) == 401
    bad = world.get("/api/v1/search", q="trade pre/1000 confirm")
    assert bad.status_code == 400 and "at most 999" in bad.json()["detail"]
    # a tenant's auditor sees the retention rules of its own tenants and numbers only
    world.archive.schedules.store({"numbers": {p.PNID: ["FINRA"], PNID_B: ["HIPAA"]},
                                   "tenants": {WABA_B: ["HIPAA"]}}, "test", datetime.now(UTC))
    seen = world.get("/api/v1/reports/retention").json()["schedule"]
    assert PNID_B not in seen["numbers"] and WABA_B not in seen["tenants"] and p.PNID in seen["numbers"]
    # what the service writes under its data dir is its user's alone
    data = Path(world.archive.settings.data_dir)
    loose = [f for f in data.rglob("*") if f.is_file() and "seaweedfs" not in f.parts
             and stat.S_IMODE(f.stat().st_mode) & 0o077]
    assert not loose, f"readable by others: {loose[:5]}"


def test_an_export_jobs_query_is_not_stored_in_clear_and_no_redirect_echoes_the_host(world: World) -> None:  # noqa: F811
    from exporters.jobs import exports

    auth = {"Authorization": f"Bearer {world.tokens['auditor']}"}
    canary = "zebracanary4711"
    r = world.client.post("/api/v1/exports", json={"matter": "Q-1", "query": f"trade OR {canary}"}, headers=auth)
    assert r.status_code == 202
    job = r.json()["id"]
    world.client.app.state.export_jobs.wait(job, 120)  # type: ignore[attr-defined]
    with world.archive.engine.connect() as conn:
        stored = conn.execute(sa.select(exports.c.scope).where(exports.c.id == job)).scalar_one()
    assert canary not in stored and stored.startswith("aesgcm:")
    assert world.get(f"/api/v1/exports/{job}").json()["scope"]["query"] == f"trade OR {canary}"  # for its owner
    r = world.client.get("/api/v1/search/", params={"q": "x"}, headers={**auth, "Host": "evil.example"},
                         follow_redirects=False)
    assert r.status_code == 404 and "evil.example" not in r.headers.get("location", "")


# -- finding 9: an admin alone reaches no content --------------------------------------------------


def test_an_admin_cannot_mint_content_access_alone(world: World) -> None:  # noqa: F811
    import pyotp

    admin = {"Authorization": f"Bearer {world.tokens['admin']}"}
    compliance_a = {"Authorization": f"Bearer {world.tokens['compliance']}"}  # tenant A's officer
    key = world.client.post("/api/v1/admin/api-keys", headers=admin,
                            json={"name": "grab-b", "role": "auditor", "tenants": [WABA_B]}).json()
    regulator = world.client.post("/api/v1/admin/users", headers=admin,
                                  json={"name": "fake-regulator", "role": "regulator"}).json()
    # the admin never sees the regulator's secrets, only an enrolment code meant for the person
    assert "password" not in regulator and "totp_secret" not in regulator and regulator["enrolment_code"]
    # neither works: the key is refused, and even an admin who intercepts the code and enrols cannot sign in
    assert world.client.get("/api/v1/search", params={"q": "secret"},
                            headers={"Authorization": f"Bearer {key['token']}"}).status_code == 401
    stolen = world.client.post("/api/v1/auth/enrol", json={"name": "fake-regulator",
                                                           "code": regulator["enrolment_code"]}).json()
    signed_in = world.client.post("/api/v1/auth/session", json={
        "name": "fake-regulator", "password": stolen["password"], "otp": pyotp.TOTP(stolen["totp_secret"]).now()})
    assert signed_in.status_code == 401
    # the admin cannot approve; a tenant officer cannot approve past its tenants
    assert world.client.post(f"/api/v1/approvals/{key['id']}", headers=admin).status_code == 403
    refused = world.client.post(f"/api/v1/approvals/{key['id']}", headers=compliance_a)
    assert refused.status_code == 403 and "tenants" in refused.json()["detail"]
    assert world.client.post(f"/api/v1/approvals/{regulator['id']}", headers=compliance_a).status_code == 403
    listed = {p_["id"]: p_ for p_ in world.client.get("/api/v1/admin/principals", headers=admin).json()["principals"]}
    assert listed[key["id"]]["pending_approval"] and listed[regulator["id"]]["pending_approval"]


def test_export_jobs_are_bounded_per_principal_deleted_on_request_and_expire(world: World) -> None:  # noqa: F811
    from datetime import UTC, datetime, timedelta

    from fastapi.testclient import TestClient

    from strongroom.app import create_app

    settings = world.archive.settings
    saved = settings.export_max_active, settings.export_max_stored
    settings.export_max_active, settings.export_max_stored = 1, 1_000
    try:
        app = create_app(world.archive)
    finally:
        settings.export_max_active, settings.export_max_stored = saved
    client, jobs = TestClient(app), app.state.export_jobs
    auth = {"Authorization": f"Bearer {world.tokens['auditor']}"}
    first = client.post("/api/v1/exports", json={"matter": "L-1"}, headers=auth)
    second = client.post("/api/v1/exports", json={"matter": "L-2"}, headers=auth)
    assert first.status_code == 202 and second.status_code in (202, 429)  # 429 while the first runs
    jobs.wait(first.json()["id"], 120)
    job = first.json()["id"]
    assert client.get(f"/api/v1/exports/{job}/download", headers=auth).status_code == 200
    assert client.delete(f"/api/v1/exports/{job}", headers={"Authorization": f"Bearer {world.other}"}
                         ).status_code == 404  # not theirs
    assert client.delete(f"/api/v1/exports/{job}", headers=auth).status_code == 204
    assert not jobs.path(job).exists() and client.get(f"/api/v1/exports/{job}", headers=auth).json()["state"] == "deleted"
    assert client.get(f"/api/v1/exports/{job}/download", headers=auth).status_code == 409
    # every finished bundle left is deleted once its time is up
    jobs.limits = type(jobs.limits)(active=1, stored=1)
    assert client.post("/api/v1/exports", json={"matter": "L-3"}, headers=auth).status_code == 429  # stored ones
    expired = jobs.expire(datetime.now(UTC) + timedelta(days=8))
    assert expired >= 1 and not list(jobs.directory.glob("*.zip.enc"))
    actions = [e["type"] for e in world.get("/api/v1/audit-trail", "regulator", limit=10000).json()["entries"]]
    assert "export.deleted" in actions and "export.expired" in actions


def test_a_hold_is_placed_on_every_object_in_scope_or_on_none(archive: Any) -> None:
    import pytest

    from archiver.errors import Unavailable
    from policies.holds import Scope, hold_objects, holds

    ingest(archive, p.inbound(p.text("wamid.at1", ALICE, T, "first")))
    ingest(archive, p.inbound(p.text("wamid.at2", ALICE, T + 86400 * 3, "second")))  # another segment
    keys = list(archive.store.list_keys("records/stream=" + p.PNID))
    assert len(keys) >= 2
    real, calls = archive.store.set_legal_hold, []

    def flaky(key: str, version: Any, on: bool) -> None:
        calls.append((key, on))
        if on and len([c for c in calls if c[1]]) == 2:
            raise RuntimeError("store went away mid-placement")
        real(key, version, on)

    archive.store.set_legal_hold = flaky  # type: ignore[method-assign]
    try:
        with pytest.raises(Unavailable):
            archive.holds().place("M-atomic", Scope(streams=[p.PNID]), "test")
    finally:
        archive.store.set_legal_hold = real  # type: ignore[method-assign]
    with archive.engine.connect() as conn:
        row = conn.execute(sa.select(holds).where(holds.c.matter == "M-atomic")).one()
        assert row.released_at is not None  # not left active with half its objects
        reached = conn.execute(sa.select(hold_objects.c.object_key).where(hold_objects.c.hold_id == row.id)).scalars()
        assert list(reached) == [calls[0][0]]  # the record of what it reached, and then let go
    from botocore.exceptions import ClientError

    for key in keys:  # the store holds nothing for it (SeaweedFS answers what S3 would)
        try:
            status = archive.store.s3.get_object_legal_hold(Bucket=archive.store.bucket, Key=key)["LegalHold"]["Status"]
        except ClientError as e:
            assert e.response["Error"]["Code"] == "NoSuchObjectLegalHold"  # never held at all
            continue
        assert status == "OFF", key
