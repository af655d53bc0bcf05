"""The auditor API on PostgreSQL + SeaweedFS: RBAC matrix generated from the routes, one access
event per read route, tenant isolation, credentials (API keys, TOTP sessions, OIDC), views with
inclusion proofs, hardening, and no plaintext anywhere after ingest, search and rebuild."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pyotp
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from archiver import crypto
from archiver.checkpoint import SignedCheckpoint
from archiver.db import events
from archiver.merkle import hash_leaf, verify_inclusion
from audit import access as access_module
from audit.auth import api_keys, principals
from exporters import verify_bundle as vb
from exporters.jobs import exports
from strongroom import payloads as p
from strongroom.app import create_app
from strongroom.embedded import EmbeddedSeaweedFS
from strongroom.runtime import Archive, configure_logging, open_archive
from strongroom.settings import Settings
from tests.conftest import APP_SECRET, VERIFY_TOKEN, app_routes, ingest, pg_database
from tests.graph_standin import GraphStandIn

T = 1_764_000_000
ALICE, BOB = "16505550401", "16505550402"
WABA_B, PNID_B, CAROL = "200000000000001", "200000000000002", "16505550499"
CANARY = "CANARY-api-\u00e9t\u00e9-4d1e"
ISSUER, AUDIENCE = "https://idp.example.test/", "strongroom-api"
PUBLIC = {"/healthz", "/webhooks/whatsapp", "/api/v1/auth/session",  # webhook: HMAC; session, enrol: the
          "/api/v1/auth/enrol"}  # credential exchanges
# The console's sign-in page and exchange, and its vendored static files (no archived data).
PUBLIC_CONSOLE = {"/console/login", "/console/enrol", "/console/login/sso", "/console/login/sso/callback",
                  "/console/static/{name}"}


def _b_body(*msgs: dict[str, Any]) -> bytes:
    """Messages to tenant B's number."""
    value = {"contacts": [{"profile": {"name": "Carol"}, "wa_id": CAROL}], "messages": list(msgs)}
    return p.body(p.envelope(p.change("messages", value, pnid=PNID_B), waba=WABA_B))


TICKET = b"\xff\xd8\xff JPEG the trade ticket " + CANARY.encode()


def _scenario(archive: Archive, ticket_sha256: str) -> None:
    ingest(archive,
           p.inbound(p.text("wamid.a1", ALICE, T, f"Please confirm the trade {CANARY}")),
           p.echo("wamid.a2", ALICE, T + 60, "Trade confirmed from the app"),
           p.statuses(("wamid.a2", ALICE, "delivered", T + 61), ("wamid.a2", ALICE, "read", T + 90)),
           p.inbound({"from": ALICE, "id": "wamid.a3", "timestamp": str(T + 120), "type": "edit",
                      "edit": {"original_message_id": "wamid.a1",
                               "message": {"type": "text", "text": {"body": "Please confirm the trade now"}}}}),
           p.inbound({"from": ALICE, "id": "wamid.a4", "timestamp": str(T + 130), "type": "reaction",
                      "reaction": {"message_id": "wamid.a2", "emoji": "\U0001f44d"}}),
           p.inbound(p.text("wamid.b1", BOB, T + 200, "statement for March please")),
           p.inbound(p.image("wamid.b2", BOB, T + 210, "m-api", ticket_sha256, caption="the trade ticket")),
           _b_body(p.text("wamid.c1", CAROL, T + 300, "tenant B trade secret")),
           p.template_status("APPROVED", "trade_confirm", "en", T - 3600))
    archive.search_index().update()
    review = archive.supervision()  # every message sampled: each is a review item
    review.store_policy("everything", {"lexicons": ["*"], "sample_rate": 1.0, "queue": "first-level"}, "test")
    review.run()


@dataclass
class World:
    archive: Archive
    client: TestClient
    tokens: dict[str, str]  # role -> bearer token (tenant A, or all for regulator/admin)
    other: str  # an auditor key of tenant B
    oidc_key: rsa.RSAPrivateKey
    log_file: Path
    export_id: str = ""

    def get(self, path: str, role: str = "auditor", **params: Any) -> Any:
        return self.client.get(path, params=params, headers={"Authorization": f"Bearer {self.tokens[role]}"})

    def attachment_id(self) -> str:
        """stream/seq of the stored (sealed) attachment of wamid.b2."""
        with self.archive.engine.connect() as conn:
            r = conn.execute(sa.select(events.c.stream, events.c.seq).where(
                events.c.kind == "media", events.c.wamid == "wamid.b2")).one()
        return f"{r.stream}/{r.seq}"

    def subject(self, phone: str) -> str:
        with self.archive.engine.connect() as conn:
            return conn.execute(sa.select(events.c.conversation).where(
                events.c.wamid.like("wamid.%"), events.c.kind == "message",
                events.c.sender == self.archive.keyring.blind_index("wa", phone))).scalars().first()  # type: ignore[return-value]

    def record_id(self, wamid: str) -> str:
        with self.archive.engine.connect() as conn:
            r = conn.execute(sa.select(events.c.stream, events.c.seq).where(
                events.c.wamid == wamid, events.c.kind == "message")).one()
        return f"{r.stream}/{r.seq}"

    def access_events(self) -> list[dict[str, Any]]:
        with self.archive.engine.connect() as conn:
            rows = conn.execute(sa.select(events).where(events.c.natural_key.like("access:%"))
                                .order_by(events.c.id)).all()
        return [json.loads(self.archive.keyring.open_record(r)) for r in rows]


def _jwks(*keys: Any) -> dict[str, Any]:
    out = []
    for kid, key in keys:
        if isinstance(key, rsa.RSAPrivateKey):
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        else:
            jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key()))
        out.append({**jwk, "kid": kid, "use": "sig"})
    return {"keys": out}


def oidc_token(key: Any, kid: str = "rsa-1", alg: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice@firm", "iat": now, "exp": now + 300,
            "strongroom_role": "auditor", "strongroom_tenants": [p.WABA], **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=alg, headers={"kid": kid})


def login(client: TestClient, created: dict[str, str]) -> str:
    r = client.post("/api/v1/auth/session", json={"name": created["name"], "password": created["password"],
                                                  "otp": pyotp.TOTP(created["totp_secret"]).now()})
    assert r.status_code == 200, r.text
    return r.json()["token"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, seaweed: EmbeddedSeaweedFS) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("api")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    jwks = tmp / "jwks.json"
    jwks.write_text(json.dumps(_jwks(("rsa-1", rsa_key), ("ed-1", ed_key))))
    log_file = tmp / "service.log"
    graph = GraphStandIn().start()
    ticket = graph.add("m-api", TICKET)
    with pg_database() as url, log_file.open("w") as log_stream:
        settings = Settings(graph_base_url=graph.base_url, graph_token=graph.token,  # type: ignore[arg-type]
                            data_dir=tmp / "data", database_url=url, s3_endpoint=seaweed.endpoint,
                            s3_bucket=f"api-{int(time.time() * 1000)}", s3_access_key=seaweed.access_key,
                            s3_secret_key=seaweed.secret_key, app_secret=APP_SECRET, verify_token=VERIFY_TOKEN,
                            retention_days=1, oidc_issuer=ISSUER, oidc_audience=AUDIENCE, oidc_jwks_file=jwks,
                            api_rate_per_minute=100_000)  # type: ignore[call-arg]
        archive = open_archive(settings)
        configure_logging("DEBUG", log_stream)
        try:
            _scenario(archive, ticket.sha256)
            client = TestClient(create_app(archive))
            accounts = archive.accounts()
            tokens = {role: accounts.create_api_key(f"svc-{role}", role, [p.WABA], "test", approved=True)["token"]
                      for role in ("ingest", "auditor")}
            for role, tenants in (("compliance", [p.WABA]), ("admin", None), ("regulator", None),
                                  ("reviewer", [p.WABA])):
                tokens[role] = login(client, accounts.create_user(f"{role}-1", role, tenants, "test", approved=True))
            other = accounts.create_api_key("svc-b", "auditor", [WABA_B], "test", approved=True)["token"]
            w = World(archive, client, tokens, other, rsa_key, log_file)
            r = client.post("/api/v1/exports", json={"matter": "M-1", "query": "trade"},
                            headers={"Authorization": f"Bearer {tokens['auditor']}"})
            assert r.status_code == 202, r.text
            w.export_id = r.json()["id"]
            client.app.state.export_jobs.wait(w.export_id, 120)  # type: ignore[attr-defined]
            yield w
        finally:
            configure_logging("INFO")
            archive.close()
            graph.stop()


# -- the route table -------------------------------------------------------------------------------


def _routes(world: World) -> list[Any]:
    """Every route the app serves, with included routers flattened (FastAPI wraps them)."""
    return app_routes(world.client.app.routes)  # type: ignore[attr-defined]


def _api_routes(world: World) -> list[APIRoute]:
    return [r for r in _routes(world) if isinstance(r, APIRoute)]


def _rule(route: APIRoute) -> tuple[list[str], bool]:
    extra = route.openapi_extra or {}
    return extra.get("x-strongroom-roles", []), extra.get("x-strongroom-audited", False)


def _call(world: World, route: APIRoute, token: str | None, params: dict[str, Any] | None = None,
          body: Any = None) -> Any:
    path = route.path
    for name in route.param_convertors:
        path = path.replace("{" + name + "}", "1" if name == "seq" else "x")
    method = sorted(route.methods)[0]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return world.client.request(method, path, params=params, json=body, headers=headers, follow_redirects=False)


def test_every_route_has_a_rule_and_only_health_webhook_and_sign_in_are_public(world: World) -> None:
    routes = _routes(world)
    assert {getattr(r, "path", "") for r in routes} >= PUBLIC | {"/api/v1/search"}
    for route in routes:
        path = getattr(route, "path", "")
        if path in PUBLIC:
            continue
        assert isinstance(route, APIRoute), f"{path}: not an API route (static files, mounts, docs are not allowed)"
        roles, _ = _rule(route)
        assert roles, f"{sorted(route.methods)} {path} has no access rule: declare one with audit.http.rule()"
        if (route.openapi_extra or {}).get("x-strongroom-console"):  # cookie sessions (tests/test_console.py)
            if path in PUBLIC_CONSOLE:
                continue
            r = _call(world, route, None)
            assert (r.status_code == 303 and r.headers["location"] == "/console/login") or r.status_code == 401, \
                f"{path} answered {r.status_code} without a session"
            bearer = _call(world, route, world.tokens["compliance"])  # a bearer token is not a console session
            assert bearer.status_code in (303, 401), f"{path} took a bearer token"
            continue
        r = _call(world, route, None)
        assert r.status_code == 401, f"{path} answered {r.status_code} without credentials"
        assert r.headers["www-authenticate"] == "Bearer"
    for probe in ("/docs", "/redoc", "/openapi.json", "/env", "/heapdump", "/actuator", "/debug", "/metrics",
                  "/admin", "/.env", "/api/v1/debug"):
        assert world.client.get(probe).status_code == 404, probe


def test_rbac_matrix_over_every_route_and_role(world: World) -> None:
    """Generated from the app's routes: a route without a rule, or a role reaching past its rule, fails."""
    checked = 0
    for route in _api_routes(world):
        roles, _ = _rule(route)
        if route.path in PUBLIC or (route.openapi_extra or {}).get("x-strongroom-console"):
            continue  # (the console's own matrix, over its cookie sessions: tests/test_console.py)
        for role, token in world.tokens.items():
            r = _call(world, route, token)
            refused_by_role = r.status_code == 403 and f"role {role} may not call" in r.text
            if role in roles:  # it may still be refused for its tenants, never for its role
                assert r.status_code != 401 and not refused_by_role, f"{role} refused on {route.path}: {r.text}"
            else:
                assert refused_by_role, f"{role} reached {sorted(route.methods)} {route.path}: {r.status_code}"
            checked += 1
    assert checked >= 5 * 18


# -- access audit ----------------------------------------------------------------------------------


def _read_requests(world: World) -> dict[str, tuple[str, dict[str, Any]]]:
    """A valid request (role, params) for every audited route; a new audited route must be added here."""
    stream, seq = world.record_id("wamid.a1").split("/")
    item = next(i for i in world.archive.supervision().items() if i["tenant"] == p.WABA)
    day = datetime.fromtimestamp(T, UTC).date()
    span = {"from": f"{day.isoformat()}T00:00:00Z", "to": f"{(day + timedelta(days=1)).isoformat()}T00:00:00Z"}
    return {
        "/api/v1/review/items": ("reviewer", {}),
        "/api/v1/review/items/{item_id}": ("reviewer", {"_path": f"/api/v1/review/items/{item['id']}"}),
        "/api/v1/review/trail/{stream}/{seq}": ("regulator", {"_path": f"/api/v1/review/trail/{stream}/{seq}"}),
        "/api/v1/review/policies": ("reviewer", {}),
        "/api/v1/review/report": ("compliance", span),
        "/api/v1/review/dry-run": ("compliance", {"_json": {**span, "document": {"lexicons": ["*"]}}}),
        "/api/v1/search": ("auditor", {"q": "trade"}),
        "/api/v1/records/{stream}/{seq}": ("auditor", {"_path": f"/api/v1/records/{stream}/{seq}"}),
        "/api/v1/attachments/{stream}/{seq}": ("auditor", {"_path": f"/api/v1/attachments/{world.attachment_id()}"}),
        "/api/v1/conversations/{conversation}": ("auditor",
                                                 {"_path": f"/api/v1/conversations/{world.subject(ALICE)}"}),
        "/api/v1/ledgers/consent": ("compliance", {"stream": p.PNID, "subject": world.subject(ALICE)}),
        "/api/v1/ledgers/templates": ("regulator", {"tenant": p.WABA, "name": "trade_confirm", "language": "en"}),
        "/api/v1/holds": ("compliance", {}),
        "/api/v1/reports/completeness": ("auditor", {"day": datetime.fromtimestamp(T, UTC).date().isoformat()}),
        "/api/v1/reports/retention": ("regulator", {}),
        "/api/v1/violations": ("compliance", {}),
        "/api/v1/proofs/consistency": ("auditor", {"stream": stream, "from_size": 1}),
        "/api/v1/audit-trail": ("regulator", {"limit": 5}),
        "/api/v1/proposals": ("admin", {}),
        "/api/v1/admin/principals": ("admin", {}),
        "/api/v1/exports/{job_id}": ("auditor", {"_path": f"/api/v1/exports/{world.export_id}"}),
        "/api/v1/exports/{job_id}/download": ("auditor", {"_path": f"/api/v1/exports/{world.export_id}/download"}),
    }


def test_every_read_route_writes_exactly_one_access_event_before_answering(world: World) -> None:
    reads = _read_requests(world)
    audited = [r for r in _api_routes(world) if _rule(r)[1] and not (r.openapi_extra or {}).get("x-strongroom-console")]
    assert {r.path for r in audited} == set(reads), "every audited route needs a sample request here"
    # (the console's pages are checked in a browser, one access event per page: tests/test_console.py)
    for route in audited:
        role, params = reads[route.path]
        params = dict(params)
        path, body = params.pop("_path", route.path), params.pop("_json", None)
        before = len(world.access_events())
        r = world.get(path, role, **params) if body is None else world.client.post(
            path, json=body, headers={"Authorization": f"Bearer {world.tokens[role]}"})
        assert r.status_code == 200, (path, r.text)
        after = world.access_events()
        assert len(after) == before + 1, f"{path} wrote {len(after) - before} access events"
        ev = after[-1]
        assert ev["kind"] == "access" and ev["actor"].endswith(("svc-auditor", "compliance-1", "regulator-1",
                                                                 "admin-1", "reviewer-1"))
        d = ev["details"]
        pinned = world.client.app.state.export_jobs.get(world.export_id)["manifest_sha256"]  # type: ignore[attr-defined]
        expected = pinned if path.endswith("/download") else hashlib.sha256(r.content).hexdigest()
        assert d["role"] == role and d["result_sha256"] == expected
        assert isinstance(d["count"], int) and "query" in d and isinstance(d["ids"], list)
        assert d["break_glass"] == (role == "regulator")
    # refusals read nothing and so write no access event
    before = len(world.access_events())
    assert world.get("/api/v1/search", "ingest", q="trade").status_code == 403
    assert len(world.access_events()) == before


def test_a_read_fails_when_its_access_event_cannot_be_written(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("audit store down")

    monkeypatch.setattr(access_module, "append_audit", broken)
    r = world.get("/api/v1/search", q="trade")
    assert r.status_code == 503 and b"wamid" not in r.content and b"trade" not in r.content
    r = world.get(f"/api/v1/records/{world.record_id('wamid.b1')}")
    assert r.status_code == 503 and b"statement" not in r.content


# -- tenants ---------------------------------------------------------------------------------------


def test_tenants_see_only_their_own_records_by_search_id_and_count(world: World) -> None:
    a_hdr = {"Authorization": f"Bearer {world.tokens['auditor']}"}
    b_hdr = {"Authorization": f"Bearer {world.other}"}
    a = world.client.get("/api/v1/search", params={"q": "trade"}, headers=a_hdr).json()
    b = world.client.get("/api/v1/search", params={"q": "trade"}, headers=b_hdr).json()
    assert {h["wamid"] for h in a["items"]} == {"wamid.a1", "wamid.a2", "wamid.a3", "wamid.b2"} and a["total"] == 4
    assert [h["wamid"] for h in b["items"]] == ["wamid.c1"] and b["total"] == 1
    everyone = world.get("/api/v1/search", "regulator", q="trade").json()
    assert everyone["total"] == 5  # the break-glass role spans tenants
    # by id: another tenant's record is indistinguishable from one that does not exist
    c1 = world.record_id("wamid.c1")
    stream_b = c1.split("/")[0]
    theirs = world.client.get(f"/api/v1/records/{c1}", headers=a_hdr)
    missing = world.client.get(f"/api/v1/records/{stream_b}/999999", headers=a_hdr)
    assert theirs.status_code == missing.status_code == 404 and theirs.json() == missing.json()
    assert world.client.get(f"/api/v1/records/{c1}", headers=b_hdr).status_code == 200
    assert world.client.get(f"/api/v1/records/{world.record_id('wamid.a1')}", headers=b_hdr).status_code == 404
    # threads, ledgers and reports follow the same line
    carol = world.subject(CAROL)
    assert world.client.get(f"/api/v1/conversations/{carol}", headers=a_hdr).json()["total"] == 0
    assert world.client.get(f"/api/v1/conversations/{carol}", headers=b_hdr).json()["total"] == 1
    assert world.client.get("/api/v1/ledgers/templates", headers=b_hdr, params={
        "tenant": p.WABA, "name": "trade_confirm", "language": "en"}).status_code == 404
    assert world.client.get("/api/v1/ledgers/consent", headers=b_hdr, params={
        "stream": p.PNID, "subject": world.subject(ALICE)}).status_code == 404
    # and an unparseable query says where, without naming anyone's data
    bad = world.client.get("/api/v1/search", params={"q": "trade AND (shares"}, headers=b_hdr)
    assert bad.status_code == 400 and "position" in bad.json() and "wamid" not in bad.text


# -- views ---------------------------------------------------------------------------------------


def test_a_record_comes_with_an_inclusion_proof_a_third_party_can_check(world: World) -> None:
    rec = world.get(f"/api/v1/records/{world.record_id('wamid.a1')}").json()
    assert rec["content"]["message"]["text"]["body"].startswith("Please confirm the trade")
    proof = rec["proof"]
    # with nothing but the public key: the checkpoint signature, the leaf from the sealed bytes, the path
    cp = SignedCheckpoint.from_json(json.dumps(proof["signed_checkpoint"]).encode())
    cp.verify(world.archive.public_key)
    sealed = base64.b64decode(proof["sealed_record"])
    assert CANARY.encode() not in sealed  # sealed bytes are ciphertext
    leaf = hash_leaf(sealed)
    assert leaf.hex() == proof["leaf_hash"] and cp.checkpoint.tree_size == proof["tree_size"]
    verify_inclusion(rec["seq"], proof["tree_size"], leaf, [bytes.fromhex(h) for h in proof["path"]],
                     bytes.fromhex(cp.checkpoint.root_hash))


def test_an_attachment_is_downloaded_decrypted_checked_and_only_by_its_tenant(world: World) -> None:
    media_id = world.attachment_id()
    r = world.get(f"/api/v1/attachments/{media_id}")
    assert r.status_code == 200 and r.content == TICKET
    assert r.headers["x-attachment-sha256"] == hashlib.sha256(TICKET).hexdigest()
    # never rendered by the browser on our origin: an opaque download, sandboxed, not cached
    assert r.headers["content-type"] == "application/octet-stream" and r.headers["x-attachment-type"] == "image/jpeg"
    assert r.headers["content-disposition"].startswith("attachment;") and r.headers["x-content-type-options"] == \
        "nosniff" and "sandbox" in r.headers["content-security-policy"] and r.headers["cache-control"] == "no-store"
    # another tenant's attachment, a record that is no attachment, and no record are the same 404
    other = world.client.get(f"/api/v1/attachments/{media_id}", headers={"Authorization": f"Bearer {world.other}"})
    not_media = world.get(f"/api/v1/attachments/{world.record_id('wamid.b2')}")
    missing = world.get(f"/api/v1/attachments/{media_id.split('/')[0]}/999999")
    assert other.status_code == not_media.status_code == missing.status_code == 404
    # the thread names the stored attachment the download reads
    t = world.get(f"/api/v1/conversations/{world.subject(BOB)}").json()
    ticket = next(it for it in t["items"] if it["record"]["wamid"] == "wamid.b2")
    assert [a["id"] for a in ticket["attachments"]] == [media_id]


def test_a_thread_shows_versions_statuses_reactions_and_provenance_in_order(world: World) -> None:
    t = world.get(f"/api/v1/conversations/{world.subject(ALICE)}").json()
    msgs = [it for it in t["items"] if "marker" not in it]
    assert [m["record"]["wamid"] for m in msgs] == ["wamid.a1", "wamid.a2"]
    first, second = msgs
    assert [v["type"] for v in first["versions"]] == ["edit"] and not first["revoked"]
    assert first["versions"][0]["content"]["message"]["edit"]["message"]["text"]["body"].endswith("now")
    assert [s["status"] for s in second["statuses"]] == ["delivered", "read"]
    assert second["provenance"]["origin"] == "app" and first["provenance"]["origin"] == "api"
    assert [r["content"]["message"]["reaction"]["emoji"] for r in second["reactions"]] == ["\U0001f44d"]
    page = world.get(f"/api/v1/conversations/{world.subject(ALICE)}", limit=1).json()
    assert len(page["items"]) == 1 and page["next_after"] is not None
    rest = world.get(f"/api/v1/conversations/{world.subject(ALICE)}", after=page["next_after"]).json()
    assert [i["record"]["wamid"] for i in page["items"] + rest["items"]] == [m["record"]["wamid"] for m in t["items"]]


def test_search_filters_pages_and_dates_through_the_api(world: World) -> None:
    one = world.get("/api/v1/search", q="trade", limit=1).json()
    assert one["total"] == 4 and len(one["items"]) == 1 and one["parsed"] == "trade"  # a3: the edited version
    two = world.get("/api/v1/search", q="trade", limit=5, cursor=one["next_cursor"]).json()
    assert [h["wamid"] for h in one["items"] + two["items"]] == ["wamid.a1", "wamid.a2", "wamid.a3", "wamid.b2"]
    assert [h["wamid"] for h in world.get("/api/v1/search", q="trade", origin="app").json()["items"]] == ["wamid.a2"]
    start = datetime.fromtimestamp(T + 100, UTC).isoformat()
    assert [h["wamid"] for h in world.get("/api/v1/search", q="trade", **{"from": start}).json()["items"]] == [
        "wamid.a3", "wamid.b2"]
    assert world.get("/api/v1/search", q="trade", **{"from": "2025-11-24T00:00"}).status_code == 400  # no zone
    assert world.get("/api/v1/search", q="trade", cursor="bm90LWEtY3Vyc29y").status_code == 400


# -- credentials -----------------------------------------------------------------------------------


def test_api_keys_are_shown_once_stored_hashed_and_revocable(world: World) -> None:
    admin = {"Authorization": f"Bearer {world.tokens['admin']}"}
    r = world.client.post("/api/v1/admin/api-keys", headers=admin,
                          json={"name": "ci-reader", "role": "auditor", "tenants": [p.WABA]})
    assert r.status_code == 201
    key = r.json()
    with world.archive.engine.connect() as conn:
        stored = conn.execute(sa.select(api_keys).where(api_keys.c.id == key["id"])).one()
    assert key["token"] not in json.dumps([str(v) for v in stored])
    assert stored.secret_sha256 == hashlib.sha256(key["token"].encode()).hexdigest()
    listed = world.client.get("/api/v1/admin/principals", headers=admin).text
    assert key["token"] not in listed and "secret" not in listed and "password" not in listed
    hdr = {"Authorization": f"Bearer {key['token']}"}
    assert world.client.get("/api/v1/holds", headers=hdr).status_code == 401  # it reads content: pending approval
    compliance = {"Authorization": f"Bearer {world.tokens['compliance']}"}
    assert world.client.post(f"/api/v1/approvals/{key['id']}", headers=compliance).status_code == 200
    assert world.client.get("/api/v1/holds", headers=hdr).status_code == 200
    assert world.client.delete(f"/api/v1/admin/api-keys/{key['id']}", headers=admin).status_code == 204
    assert world.client.get("/api/v1/holds", headers=hdr).status_code == 401
    # roles that change the archive or span tenants are people with MFA, never keys
    r = world.client.post("/api/v1/admin/api-keys", headers=admin,
                          json={"name": "x", "role": "compliance", "tenants": [p.WABA]})
    assert r.status_code == 400 and "MFA" in r.json()["detail"]


def test_people_sign_in_with_password_and_a_one_time_code(world: World) -> None:
    admin = {"Authorization": f"Bearer {world.tokens['admin']}"}
    made = world.client.post("/api/v1/admin/users", headers=admin,
                             json={"name": "reviewer-7", "role": "auditor", "tenants": [p.WABA]}).json()
    assert made["approval"].startswith("pending") and "password" not in made and "totp_secret" not in made
    created = world.client.post("/api/v1/auth/enrol", json={"name": "reviewer-7", "code": made["enrolment_code"]})
    assert created.status_code == 200, created.text  # the person's secrets, to the person
    assert world.client.post("/api/v1/auth/enrol", json={"name": "reviewer-7", "code": made["enrolment_code"]}
                             ).status_code == 401  # once
    created = {**made, **created.json()}
    assert world.client.post(f"/api/v1/approvals/{made['id']}",
                             headers={"Authorization": f"Bearer {world.tokens['compliance']}"}).status_code == 200
    with world.archive.engine.connect() as conn:
        row = conn.execute(sa.select(principals).where(principals.c.name == "reviewer-7")).one()
    assert row.password_hash.startswith("scrypt$") and created["password"] not in row.password_hash
    assert created["totp_secret"].encode() not in row.totp_secret
    totp = pyotp.TOTP(created["totp_secret"])

    def attempt(**over: str) -> Any:
        body = {"name": "reviewer-7", "password": created["password"], "otp": totp.now(), **over}
        return world.client.post("/api/v1/auth/session", json=body)

    wrong_pw, wrong_code, nobody = attempt(password="guess"), attempt(otp="000000"), attempt(name="nobody")
    assert wrong_pw.status_code == wrong_code.status_code == nobody.status_code == 401
    assert wrong_pw.json() == wrong_code.json() == nobody.json()  # nothing says which part was wrong
    code = totp.now()
    ok = attempt(otp=code)
    assert ok.status_code == 200
    assert attempt(otp=code).status_code == 401  # the same code twice: replay refused
    hdr = {"Authorization": f"Bearer {ok.json()['token']}"}
    assert world.client.get("/api/v1/search", params={"q": "trade"}, headers=hdr).json()["total"] == 4
    assert world.client.delete("/api/v1/auth/session", headers=hdr).status_code == 204
    assert world.client.get("/api/v1/search", params={"q": "trade"}, headers=hdr).status_code == 401


def test_oidc_tokens_are_checked_against_the_key_set_and_mfa_is_enforced(world: World) -> None:
    def status(token: str, path: str = "/api/v1/holds") -> int:
        return world.client.get(path, headers={"Authorization": f"Bearer {token}"}).status_code  # type: ignore[no-any-return]

    key = world.oidc_key
    assert status(oidc_token(key)) == 200
    assert status(oidc_token(key, aud="someone-else")) == 401
    assert status(oidc_token(key, iss="https://evil.example/")) == 401
    assert status(oidc_token(key, exp=int(time.time()) - 3600)) == 401
    assert status(oidc_token(rsa.generate_private_key(public_exponent=65537, key_size=2048))) == 401  # not in JWKS
    assert status(oidc_token(key, kid="ed-1")) == 401  # right kid, wrong key
    assert status(oidc_token(key, strongroom_role="superuser")) == 401
    assert status(oidc_token(key, strongroom_tenants=None)) == 401
    unsigned = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "iat": 1, "exp": 2**31,
                           "strongroom_role": "auditor", "strongroom_tenants": [p.WABA]}, None, algorithm="none")
    assert status(unsigned) == 401
    # compliance and admin need a second factor, asserted by the IdP in `amr`
    assert status(oidc_token(key, strongroom_role="compliance")) == 403
    assert status(oidc_token(key, strongroom_role="compliance", amr=["pwd", "otp"])) == 200
    assert status(oidc_token(key, strongroom_role="admin", strongroom_tenants="*", amr=["pwd"]),
                  "/api/v1/admin/principals") == 403
    # an auditor of tenant A via OIDC sees tenant A only
    hits = world.client.get("/api/v1/search", params={"q": "trade"},
                            headers={"Authorization": f"Bearer {oidc_token(key)}"}).json()
    assert hits["total"] == 4


# -- hardening -------------------------------------------------------------------------------------


def test_headers_limits_and_the_published_schema(world: World) -> None:
    r = world.get("/api/v1/holds")
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store"
    assert "max-age" in r.headers["strict-transport-security"]
    big = world.client.post("/api/v1/send-log", content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                            headers={"Authorization": f"Bearer {world.tokens['ingest']}",
                                     "Content-Type": "application/json"})
    assert big.status_code == 413
    nul = world.client.post("/api/v1/send-log", json={"tenant": "a\u0000b", "items": [{}]},
                            headers={"Authorization": f"Bearer {world.tokens['ingest']}"})
    assert nul.status_code == 400 and "NUL" in nul.text
    assert world.get("/api/v1/search", q="trade\x00").status_code == 400
    assert world.client.get("/api/v1/openapi.json").status_code == 401
    spec = world.get("/api/v1/openapi.json").json()
    search = spec["paths"]["/api/v1/search"]["get"]
    assert search["x-strongroom-roles"] == ["auditor", "compliance", "regulator"] and search["x-strongroom-audited"]
    assert "HTTPBearer" in json.dumps(spec["components"]["securitySchemes"])


def test_the_published_openapi_document_is_current(world: World) -> None:
    """docs/openapi.json is the app's schema: regenerate it with `strongroom openapi --out docs/openapi.json`."""
    published = json.loads((Path(__file__).resolve().parents[1] / "docs" / "openapi.json").read_text())
    assert published == json.loads(json.dumps(world.client.app.openapi()))  # type: ignore[attr-defined]


def test_rate_limits_answer_429(world: World) -> None:
    limited = create_app(world.archive)
    limited.state.rate_limiter.rate = 3
    client = TestClient(limited)
    hdr = {"Authorization": f"Bearer {world.tokens['auditor']}"}
    codes = [client.get("/api/v1/holds", headers=hdr).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3] == 429
    logins = [client.post("/api/v1/auth/session", json={"name": "nobody", "password": "x", "otp": "123456"})
              .status_code for _ in range(12)]
    assert logins.count(401) == 10 and logins[-1] == 429


def test_send_log_ingest_is_scoped_to_the_keys_tenant(world: World) -> None:
    hdr = {"Authorization": f"Bearer {world.tokens['ingest']}"}
    r = world.client.post("/api/v1/send-log", headers=hdr, json={"items": [p.send("wamid.s1", ALICE, T + 500)]})
    assert r.status_code == 200 and r.json() == {"accepted": 1, "new": 1}
    r = world.client.post("/api/v1/send-log", headers=hdr, json={"items": [p.send("wamid.s1", ALICE, T + 500)]})
    assert r.json()["new"] == 0
    r = world.client.post("/api/v1/send-log", headers=hdr,
                          json={"tenant": WABA_B, "items": [p.send("wamid.s2", ALICE, T + 500)]})
    assert r.status_code == 403
    assert world.client.post("/api/v1/send-log", headers=hdr, json={"items": [{"x": 1}]}).status_code == 400


def test_holds_through_the_api(world: World) -> None:
    hdr = {"Authorization": f"Bearer {world.tokens['compliance']}"}
    r = world.client.post("/api/v1/holds", headers=hdr, json={"matter": "SEC-2026-17", "streams": [p.PNID]})
    assert r.status_code == 201, r.text
    hold = r.json()
    assert hold["objects"] > 0
    # a tenant-scoped officer cannot hold another tenant's number
    assert world.client.post("/api/v1/holds", headers=hdr, json={"matter": "x", "streams": [PNID_B]}).status_code == 403
    assert any(h["id"] == hold["id"] for h in world.get("/api/v1/holds", "regulator").json()["holds"])
    r = world.client.post(f"/api/v1/holds/{hold['id']}/release", headers=hdr, json={"reason": "matter closed"})
    assert r.status_code == 200 and r.json()["objects_released"] == hold["objects"]
    assert world.client.post("/api/v1/holds/nope/release", headers=hdr, json={"reason": "x"}).status_code == 404


def test_no_plaintext_in_any_persisted_byte_after_ingest_search_rebuild_and_export(world: World) -> None:
    assert world.get("/api/v1/search", q="confirm").json()["total"] >= 1
    assert CANARY in world.get(f"/api/v1/records/{world.record_id('wamid.a1')}").text  # authorised decrypt only
    index = world.archive.search_index()
    index.rebuild()
    assert world.get("/api/v1/search", q='"Please confirm the trade"').json()["total"] == 2  # and its edit
    # an export through the API: the downloaded zip verifies and is readable; the server keeps it encrypted
    job = world.get(f"/api/v1/exports/{world.export_id}").json()
    assert job["state"] == "done" and job["counts"]["messages"] == 4
    zip_path = world.log_file.parent / "download.zip"
    zip_path.write_bytes(world.get(f"/api/v1/exports/{world.export_id}/download").content)
    transfers = world.get(f"/api/v1/exports/{world.export_id}").json()["transfers"]
    assert transfers and transfers[-1]["manifest_sha256"] == job["manifest_sha256"]  # the chain of custody grows
    assert transfers[-1]["to"] and transfers[-1]["method"] == "download through the auditor API"
    assert vb.verify(zip_path, vb.load_public_key(crypto.public_key_pem(world.archive.public_key))) == []
    with zipfile.ZipFile(zip_path) as z:
        assert CANARY in z.read("records/records.jsonl").decode()
    assert list((Path(world.archive.settings.data_dir) / "exports").glob("*.zip.enc"))
    world.archive.sealer().seal_all()  # the access events themselves are sealed too
    persisted: dict[str, bytes] = {f"s3:{k}": world.archive.store.get(k) for k in world.archive.store.list_keys("")}
    for path in Path(world.archive.settings.data_dir).rglob("*"):
        if path.is_file() and "seaweed" not in path.parts:
            persisted[str(path)] = path.read_bytes()
    persisted["log"] = world.log_file.read_bytes()
    with world.archive.engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                persisted[f"db:{table}:{row[0]}"] = repr(tuple(row)).encode()
    assert any(k.endswith("search.duckdb") for k in persisted)
    for name, data in persisted.items():
        for needle in (CANARY.encode(), b"CANARY-api", json.dumps(CANARY).encode(), b"Please confirm the trade"):
            assert needle not in data, f"plaintext in {name}"


def test_an_export_by_participant_phone_keeps_only_subject_ids(world: World) -> None:
    auth = {"Authorization": f"Bearer {world.tokens['auditor']}"}
    nobody = world.client.post("/api/v1/exports", json={"matter": "M-2", "participants": ["+1 999 555 0000"]},
                               headers=auth)
    assert nobody.status_code == 400 and "[0]" in nobody.text
    elsewhere = world.client.post("/api/v1/exports", json={"matter": "M-2", "participants": [ALICE]},
                                  headers={"Authorization": f"Bearer {world.other}"})
    assert elsewhere.status_code == 400 and elsewhere.json() == nobody.json()  # another tenant's number: no oracle
    r = world.client.post("/api/v1/exports", json={"matter": "M-2", "participants": [f"+{ALICE[0]} {ALICE[1:]}"]},
                          headers=auth)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    world.client.app.state.export_jobs.wait(job_id, 120)  # type: ignore[attr-defined]
    job = world.get(f"/api/v1/exports/{job_id}").json()
    assert job["state"] == "done" and job["scope"]["conversations"] == [world.subject(ALICE)]
    assert job["counts"]["conversations"] == 1 and job["counts"]["messages"] >= 1
    with world.archive.engine.connect() as conn:
        stored = conn.execute(sa.select(exports.c.scope).where(exports.c.id == job_id)).scalar_one()
    assert ALICE not in stored and ALICE[1:] not in stored  # the job keeps subject ids, not the number


@pytest.mark.parametrize("sql_url", ["sqlite"], indirect=True)  # PostgreSQL: the module above
def test_accounts_on_sqlite_too(make_settings: Any) -> None:
    archive = open_archive(make_settings())
    try:
        accounts = archive.accounts()
        created = accounts.create_user("officer", "compliance", ["w1"], "test", approved=True)
        token, _ = accounts.login("officer", created["password"], pyotp.TOTP(created["totp_secret"]).now())
        who = accounts.authenticate(f"Bearer {token}")
        assert (who.role, who.tenants, who.mfa) == ("compliance", frozenset({"w1"}), True)
        later = datetime.now(UTC) + timedelta(hours=9)
        with pytest.raises(Exception, match="invalid token"):
            accounts.authenticate(f"Bearer {token}", now=later)  # sessions expire
    finally:
        archive.close()


# -- supervision -----------------------------------------------------------------------------------


def test_a_reviewer_works_the_queue_of_their_tenant_over_the_api(world: World) -> None:
    hdr = {role: {"Authorization": f"Bearer {world.tokens[role]}"} for role in ("reviewer", "compliance",
                                                                                  "regulator", "auditor")}
    mine = world.get("/api/v1/review/items", "reviewer", policy="everything", limit=2).json()
    everyone = world.get("/api/v1/review/items", "regulator", policy="everything", state="all").json()
    assert {i["tenant"] for i in everyone["items"]} == {p.WABA, WABA_B}
    assert mine["total"] == len([i for i in everyone["items"] if i["tenant"] == p.WABA and i["state"] == "open"])
    assert len(mine["items"]) == 2 and mine["next_after"] == mine["items"][1]["id"]
    rest = world.get("/api/v1/review/items", "reviewer", policy="everything", after=mine["next_after"]).json()
    assert {i["id"] for i in rest["items"]}.isdisjoint(i["id"] for i in mine["items"])
    assert not any(i["tenant"] == WABA_B for i in mine["items"] + rest["items"])
    b_item = next(i for i in everyone["items"] if i["tenant"] == WABA_B)
    assert world.get(f"/api/v1/review/items/{b_item['id']}", "reviewer").status_code == 404  # as if none
    assert world.client.post(f"/api/v1/review/items/{b_item['id']}/claim", json={},
                             headers=hdr["reviewer"]).status_code == 404

    a1 = next(i for i in everyone["items"] if i["natural_key"].endswith("wamid.a1") and i["tenant"] == p.WABA)
    page = world.get(f"/api/v1/review/items/{a1['id']}", "reviewer").json()
    assert page["message"]["wamid"] == "wamid.a1" and CANARY in json.dumps(page["message"]["content"], ensure_ascii=False)
    assert [c["record"]["wamid"] for c in page["context"]][:2] == ["wamid.a1", "wamid.a2"]  # the thread around it
    base = f"/api/v1/review/items/{a1['id']}"
    assert world.client.post(f"{base}/claim", json={}, headers=hdr["reviewer"]).status_code == 200
    r = world.client.post(f"{base}/close", json={"reason": "fine"}, headers=hdr["reviewer"])
    assert r.status_code == 400 and "disposition" in r.json()["detail"]
    r = world.client.post(f"{base}/close", json={"disposition": "no_issue", "reason": " "}, headers=hdr["reviewer"])
    assert r.status_code == 400 and "reason" in r.json()["detail"]
    assert world.client.post(f"{base}/escalate", json={"reason": "a trade instruction by chat"},
                             headers=hdr["reviewer"]).status_code == 200
    r = world.client.post(f"{base}/claim", json={}, headers=hdr["reviewer"])
    assert r.status_code == 403 and "second level" in r.json()["detail"]  # a reviewer is the first level
    r = world.client.post(f"{base}/escalate", json={"reason": "again"}, headers=hdr["compliance"])
    assert r.status_code == 400 and "second level already" in r.json()["detail"]
    assert world.client.post(f"{base}/close", json={"disposition": "issue_action_taken", "reason": "confirmed on "
                             "a recorded line; rep reminded"}, headers=hdr["compliance"]).status_code == 200
    trail = world.get(f"/api/v1/review/trail/{world.record_id('wamid.a1')}", "regulator").json()
    actions = [(a["action"], a["actor"]) for a in trail["items"][0]["trail"]]
    assert actions == [("claim", "session:reviewer-1"), ("escalate", "session:reviewer-1"),
                       ("close", "session:compliance-1")]

    # bulk: each item on its own; one refused does not stop the rest
    ids = [i["id"] for i in rest["items"][:2]] + [b_item["id"]]
    r = world.client.post("/api/v1/review/items/bulk", json={"ids": ids, "action": "close", "disposition":
                          "no_issue", "reason": "routine service messages"}, headers=hdr["reviewer"])
    results = r.json()["results"]
    assert [x["ok"] for x in results] == [True, True, False] and "no such" in results[2]["error"]

    # policies: compliance changes them (sealed), a reviewer reads them; nobody else
    doc = {"lexicons": ["off_channel"], "sample_rate": 0, "queue": "off-channel"}
    assert world.client.put("/api/v1/review/policies/offchannel", json={"document": doc},
                            headers=hdr["reviewer"]).status_code == 403
    r = world.client.put("/api/v1/review/policies/offchannel", json={"document": {**doc, "sla_days": 0}},
                         headers=hdr["compliance"])
    assert r.status_code == 400 and "sla_days" in r.json()["detail"]
    assert world.client.put("/api/v1/review/policies/offchannel", json={"document": doc},
                            headers=hdr["compliance"]).json() == {"name": "offchannel", "version": 1}
    versions = world.get("/api/v1/review/policies", "reviewer").json()["policies"]
    assert any(v["name"] == "offchannel" and v["created_by"] == "session:compliance-1" for v in versions)

    day = datetime.fromtimestamp(T, UTC).date()
    span = {"from": f"{day.isoformat()}T00:00:00Z", "to": f"{(day + timedelta(days=1)).isoformat()}T00:00:00Z"}
    dry = world.client.post("/api/v1/review/dry-run", json={**span, "document": {"lexicons": [{"name": "t", "terms": [
        {"query": "trade", "reason": "test"}]}]}}, headers=hdr["compliance"]).json()
    # (tenant A's messages of the day only; the edit a3 is flagged too: its new text says "trade")
    assert {world.record_id(w) for w in ("wamid.a1", "wamid.a2", "wamid.b2")} <= set(dry["flagged_records"])
    assert dry["flagged"] == len(dry["flagged_records"]) < dry["messages"] and dry["terms"][0]["term"] == "trade"
    report = world.get("/api/v1/review/report", "compliance", **span).json()
    cov = [c for c in report["coverage"] if c["policy"] == "everything"]
    assert sum(c["messages"] for c in cov) == dry["messages"] and sum(c["reviewed"] for c in cov) == 3
    assert {r["actor"] for r in report["reviewers"]} == {"session:reviewer-1", "session:compliance-1"}
    eff = next(e for e in report["effectiveness"] if e["policy"] == "everything")
    assert eff["closed"] == 3 and eff["issues"] == 1
    assert world.get("/api/v1/review/report", "reviewer", **span).status_code == 403
