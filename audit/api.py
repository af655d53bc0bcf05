"""The auditor API: search, views, ledgers, holds, reports, send-log ingest, accounts.

Every route states who may call it (`rule`), and that rule is also published in the OpenAPI
document (``x-strongroom-roles``), so the RBAC matrix test is generated from the routes and a
new route without a rule fails it. Every route that reads archived content is ``audited``: it
writes exactly one access event (actor, role, action, query or ids, result count, SHA-256 of
the response body) to the sealed audit stream *before* the response is sent, and if that write
fails, the read fails (503) and nothing is returned.

Tenants (WABA ids) are enforced here: a principal scoped to some tenants gets the same 404 for a
record of another tenant as for a record that does not exist, and its counts include only its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Protocol

import sqlalchemy as sa
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, Security
from fastapi import Path as FPath
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from archiver.db import events, segments, stream_tenant
from archiver.keys import KeyRing
from archiver.merkle import hash_leaf, root_from_inclusion_proof
from archiver.normalize import AUDIT_STREAM, append_audit
from archiver.objectstore import ObjectStore
from archiver.outbound import SendError, SendLog
from archiver.proofs import ProofService
from archiver.records import parse_instant
from archiver.segments import sealed_records
from archiver.sqlutil import as_utc
from audit import views
from audit.auth import AccountError, Accounts, AuthError, Principal, RateLimiter
from audit.index import SearchIndex
from audit.searchlang import QuerySyntaxError
from policies.checks import ComplianceChecks
from policies.completeness import latest_reports
from policies.consent import ConsentLedger
from policies.disposition import RetentionRun
from policies.holds import HoldError, Holds, Scope
from policies.retention import Schedules
from policies.templates import TemplateLedger

log = structlog.get_logger("strongroom.api")

READERS = frozenset({"auditor", "compliance", "regulator"})
COMPLIANCE = frozenset({"compliance"})
ADMIN = frozenset({"admin"})
INGEST = frozenset({"ingest"})
ANY_ROLE = frozenset({"ingest", "auditor", "compliance", "admin", "regulator"})
ACCESS_KIND = "access"  # audit-stream kind of access events
MAX_ID = 2**63 - 1  # ids and seqs are SQL BIGINTs


class Services(Protocol):
    """What the API needs from the archive (`strongroom.runtime.Archive` provides it)."""

    engine: sa.Engine
    keyring: KeyRing
    store: ObjectStore

    @property
    def public_key(self) -> Ed25519PublicKey: ...
    @property
    def schedules(self) -> Schedules: ...
    def holds(self) -> Holds: ...
    def consent(self) -> ConsentLedger: ...
    def templates(self) -> TemplateLedger: ...
    def compliance(self) -> ComplianceChecks: ...
    def send_log(self) -> SendLog: ...
    def retention_run(self) -> RetentionRun: ...
    def search_index(self) -> SearchIndex: ...


class AuditUnavailable(Exception):
    """The access event could not be written, so the read is refused."""


bearer = HTTPBearer(auto_error=False, description="API key (sr_…), session token (srs_…) or OIDC access token")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


def rule(roles: frozenset[str], audited: bool) -> dict[str, Any]:
    """Route options: the authorization dependency and the published rule."""

    def authorize(request: Request, creds: Credentials) -> None:
        accounts: Accounts = request.app.state.accounts
        try:
            p = accounts.authenticate(f"Bearer {creds.credentials}" if creds else None)
        except AuthError as e:
            raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Bearer"}) from e
        wait = request.app.state.rate_limiter.take(f"principal:{p.id}")
        if wait:
            raise HTTPException(429, "rate limit exceeded", headers={"Retry-After": str(int(wait) + 1)})
        if p.role not in roles:
            raise HTTPException(403, f"role {p.role} may not call this route")
        if p.role in {"admin", "compliance", "regulator"} and not p.mfa:
            raise HTTPException(403, f"role {p.role} needs multi-factor authentication")
        request.state.principal = p

    return {"dependencies": [Depends(authorize)],
            "openapi_extra": {"x-strongroom-roles": sorted(roles), "x-strongroom-audited": audited}}


def access_event(request: Request, engine: sa.Engine, keyring: KeyRing, action: str, query: dict[str, Any],
                 body_sha256: str, count: int, ids: list[str]) -> None:
    """Write one access event for a read; AuditUnavailable (→ 503, nothing returned) if it fails."""
    p = principal(request)
    try:
        append_audit(engine, keyring, ACCESS_KIND, action, p.actor, {
            "role": p.role, "via": p.via, "tenants": sorted(p.tenants) if p.tenants is not None else "*",
            "break_glass": p.role == "regulator", "query": query, "ids": ids[:1000], "ids_total": len(ids),
            "count": count, "result_sha256": body_sha256})
    except Exception as e:
        log.error("access_audit.failed", action=action, error=type(e).__name__)
        raise AuditUnavailable(action) from e


def access_response(request: Request, engine: sa.Engine, keyring: KeyRing, action: str, query: dict[str, Any],
                    body: bytes, count: int, ids: list[str]) -> Response:
    """Write the access event, then (only then) send the result."""
    access_event(request, engine, keyring, action, query, hashlib.sha256(body).hexdigest(), count, ids)
    return Response(body, media_type="application/json")


def principal(request: Request) -> Principal:
    return request.state.principal  # type: ignore[no-any-return]


def json_bytes(value: Any) -> bytes:
    def default(o: Any) -> Any:
        if isinstance(o, datetime):
            return as_utc(o).isoformat()  # type: ignore[union-attr]
        if isinstance(o, date):
            return o.isoformat()
        if isinstance(o, bytes):
            return o.hex()
        raise TypeError(type(o).__name__)
    return json.dumps(value, default=default, ensure_ascii=False, separators=(",", ":")).encode()


def parse_time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_instant(value)
    except ValueError as e:
        raise HTTPException(400, f"{name}: {e}") from e


class HoldRequest(BaseModel):
    matter: str = Field(min_length=1, max_length=200)
    streams: list[str] = Field(default_factory=list, max_length=1000)
    phones: list[str] = Field(default_factory=list, max_length=1000)
    conversations: list[str] = Field(default_factory=list, max_length=1000)
    start: str | None = Field(None, alias="from", description="ISO-8601, inclusive")
    end: str | None = Field(None, alias="to", description="ISO-8601, exclusive")


class ReleaseRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=2000)


class SendLogRequest(BaseModel):
    tenant: str | None = Field(None, max_length=64)
    items: list[dict[str, Any]] = Field(min_length=1, max_length=1000)


class UserRequest(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    role: str
    tenants: list[str] | None = Field(None, description="WABA ids; omit for all (compliance, admin, regulator)")


class KeyRequest(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    role: str
    tenants: list[str] = Field(min_length=1)


class LoginRequest(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=200)
    otp: str = Field(min_length=6, max_length=8, pattern=r"^\d+$")


def api_router(archive: Services) -> APIRouter:
    router = APIRouter(prefix="/api/v1")
    engine, keyring = archive.engine, archive.keyring
    proofs = ProofService(engine)
    tenant_of: dict[str, str | None] = {}

    def tenant(stream: str) -> str | None:
        if stream not in tenant_of:
            with engine.connect() as conn:
                t = stream_tenant(conn, stream)
            if t is None:
                return None  # unknown yet: do not cache
            tenant_of[stream] = t
        return tenant_of[stream]

    def visible_stream(p: Principal, stream: str) -> bool:
        return p.tenants is None or p.sees(tenant(stream))

    def respond(request: Request, action: str, query: dict[str, Any], result: Any, count: int,
                ids: list[str]) -> Response:
        return access_response(request, engine, keyring, action, query, json_bytes(result), count, ids)

    def record_view(r: Any) -> dict[str, Any]:
        return views.record_view(keyring, r)

    # -- search -----------------------------------------------------------------------------------

    @router.get("/search", tags=["search"], **rule(READERS, audited=True))
    def search(request: Request,
               q: str = Query(..., min_length=1, max_length=2000, description="dtSearch-style query"),
               limit: int = Query(50, ge=1, le=500), cursor: str | None = Query(None, max_length=200),
               stream: str | None = Query(None, max_length=128), conversation: str | None = Query(None, max_length=64),
               direction: str | None = Query(None, max_length=16), origin: str | None = Query(None, max_length=16),
               type: str | None = Query(None, max_length=64), status: str | None = Query(None, max_length=32),
               template: str | None = Query(None, max_length=512),
               start: str | None = Query(None, alias="from", description="ISO-8601 with zone, inclusive"),
               end: str | None = Query(None, alias="to", description="ISO-8601 with zone, exclusive")) -> Response:
        """Messages matching `q` (AND/OR/NOT, "phrases", w/N, pre/N, wildcards, field:value), oldest
        first, with an exact total and a stable cursor."""
        p = principal(request)
        filters = {k: v for k, v in {"stream": stream, "conversation": conversation, "direction": direction,
                                     "origin": origin, "type": type, "status": status,
                                     "template_name": template}.items() if v is not None}
        t0, t1 = parse_time(start, "from"), parse_time(end, "to")
        try:
            page = archive.search_index().search(q, tenants=set(p.tenants) if p.tenants is not None else None,
                                                 limit=limit, cursor=cursor, filters=filters, start=t0, end=t1)
        except QuerySyntaxError:
            raise
        except ValueError as e:  # a cursor this index did not issue
            raise HTTPException(400, str(e)) from e
        result = {"total": page.total, "parsed": page.query, "next_cursor": page.next_cursor, "items": page.items}
        return respond(request, "search", {"q": q, "filters": filters, "from": start, "to": end, "cursor": cursor},
                       result, page.total, [f"{h['stream']}/{h['seq']}" for h in page.items])

    # -- records and threads ----------------------------------------------------------------------

    @router.get("/records/{stream}/{seq}", tags=["records"], **rule(READERS, audited=True))
    def record(request: Request, stream: str = FPath(..., max_length=128),
               seq: int = FPath(..., ge=0, le=MAX_ID)) -> Response:
        """One sealed record, decrypted, with its inclusion proof to the newest signed checkpoint."""
        p = principal(request)
        with engine.connect() as conn:
            r = conn.execute(sa.select(events).where(events.c.stream == stream, events.c.seq == seq)).first()
            seg = conn.execute(sa.select(segments).where(segments.c.stream == stream, segments.c.first_seq <= seq,
                                                         segments.c.last_seq >= seq)).first()
            top = conn.execute(sa.select(segments.c.last_seq, segments.c.checkpoint_key).where(
                segments.c.stream == stream, segments.c.checkpoint_key.is_not(None))
                .order_by(segments.c.last_seq.desc()).limit(1)).first()
        if r is None or not p.sees(r.tenant):
            raise HTTPException(404, "no such record")
        view = record_view(r)
        view["proof"] = _proof(stream, seq, seg, top)
        return respond(request, "record", {"stream": stream, "seq": seq}, view, 1, [f"{stream}/{seq}"])

    def _proof(stream: str, seq: int, seg: Any, top: Any) -> dict[str, Any] | None:
        if top is None or top.last_seq < seq:
            return None  # not yet under a published checkpoint
        size = top.last_seq + 1
        leaf = proofs.leaf_hash(stream, seq)
        path = proofs.inclusion(stream, seq, size)
        checkpoint = json.loads(archive.store.get(top.checkpoint_key))
        out: dict[str, Any] = {
            "leaf_index": seq, "tree_size": size, "leaf_hash": leaf.hex(), "path": [h.hex() for h in path],
            "root_from_path": root_from_inclusion_proof(seq, size, leaf, path).hex(),
            "checkpoint_key": top.checkpoint_key, "signed_checkpoint": checkpoint,
            "segment_key": seg.object_key if seg is not None else None, "sealed_record": None}
        if seg is not None and seg.disposed_at is None:
            canon = dict(sealed_records(archive.store.get(seg.object_key), [seq])).get(seq)
            if canon is not None:  # the canonical sealed bytes: ciphertext only, so a third party can hash them
                out["sealed_record"] = base64.b64encode(canon).decode()
                out["sealed_record_matches_leaf"] = hash_leaf(canon) == leaf
        return out

    @router.get("/conversations/{conversation}", tags=["records"], **rule(READERS, audited=True))
    def thread(request: Request, conversation: str, stream: str | None = Query(None, max_length=128),
               start: str | None = Query(None, alias="from"), end: str | None = Query(None, alias="to"),
               limit: int = Query(500, ge=1, le=5000),
               after: int | None = Query(None, ge=0, le=MAX_ID, description="cursor: the last item's row")
               ) -> Response:
        """The conversation as it happened: messages in time order, each with its statuses, edits and
        revokes (as versions), reactions, attachments and provenance; gap markers of its numbers."""
        p = principal(request)
        with engine.connect() as conn:
            rows, gaps = views.thread_rows(conn, conversation, p.sees, stream, parse_time(start, "from"),
                                           parse_time(end, "to"))
        items = views.thread_items(keyring, rows, gaps)
        first = 0
        if after is not None:
            first = next((i + 1 for i, it in enumerate(items) if it["row"] == after), len(items))
        page = items[first:first + limit]
        more = first + limit < len(items)
        result = {"conversation": conversation, "total": len(items), "numbers": sorted({r.stream for r in rows}),
                  "items": page, "next_after": page[-1]["row"] if more and page else None}
        return respond(request, "thread", {"conversation": conversation, "stream": stream, "from": start, "to": end,
                                           "after": after}, result, len(items),
                       [it["record"]["id"] or it["record"]["natural_key"] for it in page])

    # -- ledgers ---------------------------------------------------------------------------------

    @router.get("/ledgers/consent", tags=["ledgers"], **rule(READERS, audited=True))
    def consent(request: Request, stream: str = Query(..., max_length=128), subject: str = Query(..., max_length=40),
                category: str = Query("marketing", max_length=32), at: str | None = Query(None)) -> Response:
        """Consent of a contact (subject id) on a number as of `at` (default now), with its history."""
        p = principal(request)
        if not visible_stream(p, stream):
            raise HTTPException(404, "no such number")
        when = parse_time(at, "at") or datetime.now(UTC)
        ledger = archive.consent()
        state = ledger.state(stream, subject, category, when)
        history = [h for h in ledger.history(stream, subject) if as_utc(datetime.fromisoformat(h["at"])) <= when]
        result = {"stream": stream, "subject": subject, "category": category, "at": when, "state": state.status,
                  "deciding_entry": state.entry, "history": history}
        return respond(request, "ledger.consent", {"stream": stream, "subject": subject, "category": category,
                                                   "at": when.isoformat()}, result, len(history), [subject])

    @router.get("/ledgers/templates", tags=["ledgers"], **rule(READERS, audited=True))
    def template(request: Request, tenant: str = Query(..., max_length=64), name: str = Query(..., max_length=512),
                 language: str = Query(..., max_length=32), at: str | None = Query(None)) -> Response:
        """A template's approval status, category and body versions as of `at` (default now)."""
        p = principal(request)
        if not p.sees(tenant):
            raise HTTPException(404, "no such tenant")
        when = parse_time(at, "at") or datetime.now(UTC)
        s = archive.templates().state(tenant, name, language, when)
        result = {"tenant": tenant, "name": name, "language": language, "at": when, "status": s.status,
                  "category": s.category, "body_versions": s.version, "body_sha256": s.body_sha256,
                  "deciding_entry": s.entry}
        return respond(request, "ledger.templates", {"tenant": tenant, "name": name, "language": language,
                                                     "at": when.isoformat()}, result, 1, [f"{tenant}/{name}/{language}"])

    # -- holds -----------------------------------------------------------------------------------

    def hold_visible(p: Principal, scope: dict[str, Any]) -> bool:
        streams = scope.get("streams") or []
        return p.tenants is None or (bool(streams) and all(visible_stream(p, s) for s in streams))

    def hold_view(h: Any) -> dict[str, Any]:
        return {"id": h.id, "matter": h.matter, "scope": h.scope, "placed_by": h.placed_by, "placed_at": h.placed_at,
                "released_at": h.released_at, "objects": len(h.objects)}

    @router.get("/holds", tags=["holds"], **rule(READERS, audited=True))
    def holds_list(request: Request, include_released: bool = True) -> Response:
        p = principal(request)
        found = [hold_view(h) for h in archive.holds().list(include_released) if hold_visible(p, h.scope)]
        return respond(request, "holds.list", {"include_released": include_released}, {"holds": found},
                       len(found), [h["id"] for h in found])

    @router.post("/holds", tags=["holds"], status_code=201, **rule(COMPLIANCE, audited=False))
    def hold_place(request: Request, body: HoldRequest) -> Response:
        """Place a legal hold (S3 legal hold on every object in scope, and on later ones)."""
        p = principal(request)
        if p.tenants is not None and (not body.streams or not all(visible_stream(p, s) for s in body.streams)):
            raise HTTPException(403, "a tenant-scoped hold must name numbers of your tenants")
        try:
            h = archive.holds().place(body.matter, Scope(streams=body.streams, phones=body.phones,
                                                         subjects=body.conversations, start=body.start,
                                                         end=body.end), p.actor)
        except (HoldError, ValueError) as e:
            raise HTTPException(400, str(e)) from e
        return Response(json_bytes(hold_view(h)), status_code=201, media_type="application/json")

    @router.post("/holds/{hold_id}/release", tags=["holds"], **rule(COMPLIANCE, audited=False))
    def hold_release(request: Request, hold_id: str, body: ReleaseRequest) -> Response:
        p = principal(request)
        holds = archive.holds()
        try:
            h = holds.get(hold_id)
        except (HoldError, KeyError, LookupError) as e:
            raise HTTPException(404, "no such hold") from e
        if not hold_visible(p, h.scope):
            raise HTTPException(404, "no such hold")
        try:
            lifted = holds.release(hold_id, p.actor, body.reason)
        except HoldError as e:
            raise HTTPException(409, str(e)) from e
        return Response(json_bytes({"id": hold_id, "objects_released": len(lifted)}), media_type="application/json")

    # -- reports ---------------------------------------------------------------------------------

    @router.get("/reports/completeness", tags=["reports"], **rule(READERS, audited=True))
    def completeness(request: Request, day: date | None = None, stream: str | None = Query(None, max_length=128)
                     ) -> Response:
        """The newest sealed completeness report per number for `day` (default yesterday, UTC)."""
        p = principal(request)
        the_day = day or (datetime.now(UTC).date() - timedelta(days=1))
        reports = [r for r in latest_reports(engine, keyring, the_day, stream) if visible_stream(p, r["stream"])]
        return respond(request, "report.completeness", {"day": the_day.isoformat(), "stream": stream},
                       {"day": the_day, "reports": reports}, len(reports), [r["stream"] for r in reports])

    @router.get("/reports/retention", tags=["reports"], **rule(READERS, audited=True))
    def retention(request: Request) -> Response:
        """The schedule in force and objects overdue for disposition (expected: none)."""
        p = principal(request)
        now = datetime.now(UTC)
        schedule = json.loads(archive.schedules.current().to_json())
        overdue = archive.retention_run().overdue(now)
        if p.tenants is not None:
            overdue = [o for o in overdue if visible_stream(p, _key_stream(o["key"]))]
        return respond(request, "report.retention", {"at": now.isoformat()},
                       {"at": now, "schedule": schedule, "overdue": overdue}, len(overdue), [o["key"] for o in overdue])

    @router.get("/violations", tags=["reports"], **rule(READERS, audited=True))
    def violations(request: Request, stream: str | None = Query(None, max_length=128),
                   type: str | None = Query(None, max_length=64)) -> Response:
        """Compliance violations (consent, window, template, pricing) with their evidence."""
        p = principal(request)
        found = [v for v in archive.compliance().list(stream, type) if visible_stream(p, v["stream"])]
        return respond(request, "violations", {"stream": stream, "type": type}, {"violations": found}, len(found),
                       [v["natural_key"] for v in found])

    @router.get("/audit-trail", tags=["reports"], **rule(frozenset({"compliance", "regulator"}), audited=True))
    def audit_trail(request: Request, start: str | None = Query(None, alias="from"),
                    end: str | None = Query(None, alias="to"), limit: int = Query(1000, ge=1, le=10000),
                    after: int = Query(0, ge=0, le=MAX_ID)) -> Response:
        """The archive's own audit stream (accesses, holds, keys, decisions), decrypted."""
        p = principal(request)
        if p.tenants is not None:
            raise HTTPException(403, "the audit trail spans all tenants: it needs an all-tenant principal")
        q = sa.select(events).where(events.c.stream == AUDIT_STREAM, events.c.id > after)
        if (t0 := parse_time(start, "from")) is not None:
            q = q.where(events.c.event_time >= t0)
        if (t1 := parse_time(end, "to")) is not None:
            q = q.where(events.c.event_time < t1)
        with engine.connect() as conn:
            rows = conn.execute(q.order_by(events.c.id).limit(limit)).all()
        entries = [{"row": r.id, **record_view(r)} for r in rows]
        return respond(request, "audit_trail", {"from": start, "to": end, "after": after},
                       {"entries": entries, "next_after": rows[-1].id if len(rows) == limit else None},
                       len(entries), [e["natural_key"] for e in entries])

    # -- ingest ----------------------------------------------------------------------------------

    @router.post("/send-log", tags=["ingest"], **rule(INGEST, audited=False))
    def send_log(request: Request, body: SendLogRequest) -> Response:
        """Archive Cloud API sends (idempotent by wamid) from the sending application."""
        p = principal(request)
        tenant = body.tenant or (next(iter(p.tenants)) if p.tenants and len(p.tenants) == 1 else None)
        if tenant is None or not p.sees(tenant):
            raise HTTPException(403, "name one of your tenants")
        try:
            new = archive.send_log().record(body.items, tenant=tenant)
        except SendError as e:
            raise HTTPException(400, str(e)) from e
        return Response(json_bytes({"accepted": len(body.items), "new": new}), media_type="application/json")

    # -- accounts --------------------------------------------------------------------------------

    @router.post("/auth/session", tags=["auth"], openapi_extra={"x-strongroom-roles": ["credentials"],
                                                                  "x-strongroom-audited": False})
    def login(request: Request, body: LoginRequest) -> Response:
        """Exchange name + password + TOTP code for a session token (shown once)."""
        client = request.client.host if request.client else "?"
        if (wait := request.app.state.login_limiter.take(f"{client}|{body.name}")) or \
                request.app.state.login_limiter.take(client):
            raise HTTPException(429, "too many sign-in attempts", headers={"Retry-After": str(int(wait) + 1)})
        try:
            token, expires = request.app.state.accounts.login(body.name, body.password, body.otp)
        except AuthError as e:
            raise HTTPException(401, "invalid credentials") from e
        return Response(json_bytes({"token": token, "expires_at": expires}), media_type="application/json")

    @router.delete("/auth/session", tags=["auth"], status_code=204, **rule(ANY_ROLE, audited=False))
    def logout(request: Request, creds: Credentials) -> Response:
        if creds is not None:
            request.app.state.accounts.logout(creds.credentials)
        return Response(status_code=204)

    @router.get("/admin/principals", tags=["admin"], **rule(ADMIN, audited=True))
    def principals_list(request: Request) -> Response:
        found = request.app.state.accounts.list()
        return respond(request, "admin.principals", {}, {"principals": found}, len(found), [f["id"] for f in found])

    def created(call: Any) -> Response:
        try:
            return Response(json_bytes(call()), status_code=201, media_type="application/json")
        except AccountError as e:
            raise HTTPException(400, str(e)) from e

    @router.post("/admin/users", tags=["admin"], status_code=201, **rule(ADMIN, audited=False))
    def user_create(request: Request, body: UserRequest) -> Response:
        """A human account; the password and TOTP secret are in this response only."""
        return created(lambda: request.app.state.accounts.create_user(body.name, body.role, body.tenants,
                                                                      principal(request).actor))

    @router.post("/admin/api-keys", tags=["admin"], status_code=201, **rule(ADMIN, audited=False))
    def key_create(request: Request, body: KeyRequest) -> Response:
        """A service API key (ingest or auditor); the token is in this response only."""
        return created(lambda: request.app.state.accounts.create_api_key(body.name, body.role, body.tenants,
                                                                         principal(request).actor))

    def ended(call: Any) -> Response:
        try:
            call()
        except AccountError as e:
            raise HTTPException(404, str(e)) from e
        return Response(status_code=204)

    @router.delete("/admin/api-keys/{key_id}", tags=["admin"], status_code=204, **rule(ADMIN, audited=False))
    def key_revoke(request: Request, key_id: str) -> Response:
        return ended(lambda: request.app.state.accounts.revoke_api_key(key_id, principal(request).actor))

    @router.post("/admin/users/{principal_id}/disable", tags=["admin"], status_code=204, **rule(ADMIN, audited=False))
    def user_disable(request: Request, principal_id: str) -> Response:
        return ended(lambda: request.app.state.accounts.disable_user(principal_id, principal(request).actor))

    return router


def _key_stream(object_key: str) -> str:
    """The stream named in an object key (`…/stream=<id>/…`)."""
    for part in object_key.split("/"):
        if part.startswith("stream="):
            return part[len("stream="):]
    return ""


def configure_api(app: Any, rate_limiter: RateLimiter, login_limiter: RateLimiter, accounts: Accounts) -> None:
    """What the routes read from `app.state` (accounts, limiters), and the API's error answers."""
    from fastapi.responses import JSONResponse

    app.state.accounts = accounts
    app.state.rate_limiter = rate_limiter
    app.state.login_limiter = login_limiter

    @app.exception_handler(QuerySyntaxError)
    async def _syntax(_request: Request, e: QuerySyntaxError) -> JSONResponse:
        return JSONResponse({"detail": str(e), "position": e.position, "query": e.query}, status_code=400)

    @app.exception_handler(AuditUnavailable)
    async def _audit(_request: Request, e: AuditUnavailable) -> JSONResponse:
        return JSONResponse({"detail": "the access audit trail could not be written, so nothing is returned"},
                            status_code=503)

