"""The HTTP kit every router of the API uses: who is calling, what a route allows, the body
limits, instants in query strings, and one error shape.

- `rule(roles, audited)` is the only way a route says who may call it. It authenticates the
  bearer credential, applies the per-principal rate limit, checks the role and the second factor,
  and publishes the rule in the OpenAPI document (``x-strongroom-roles``, ``x-strongroom-audited``)
  so the RBAC matrix test is generated from the routes.
- Every error leaves as an RFC 9457 ``application/problem+json`` document (`problem`) with a
  stable ``code``: project errors (`archiver.errors.StrongroomError`) carry their own status and
  code; FastAPI's validation errors (422) keep where and why but never the submitted value (a
  sign-in's password would otherwise come back in ``input``); a crash is a bare 500. The security
  headers are added to every response, a crash's included, by `SecurityHeaders`.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any

import structlog
from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from archiver.errors import Forbidden, RateLimited, StrongroomError, Unauthenticated
from archiver.records import parse_instant_arg
from audit.access import Attachment
from audit.auth import MFA_ROLES, Principal
from audit.denied import presented

log = structlog.get_logger("strongroom.api")

PROBLEM = "application/problem+json"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
}
# Stable codes for the statuses the framework itself answers with (no project error behind them).
HTTP_CODES = {400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 409: "conflict", 413: "too_large", 415: "unsupported_media_type",
              422: "invalid_request", 429: "rate_limited", 500: "internal_error", 503: "unavailable"}
TITLES = {400: "Bad request", 401: "Authentication required", 403: "Forbidden", 404: "Not found",
          405: "Method not allowed", 409: "Conflict", 413: "Request too large", 415: "Unsupported media type",
          422: "Invalid request", 429: "Too many requests", 500: "Internal error", 503: "Service unavailable"}

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object", "title": "Problem", "required": ["type", "title", "status", "code", "detail"],
    "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                   "code": {"type": "string", "description": "stable, machine-readable"},
                   "detail": {"type": "string"}},
    "additionalProperties": True}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": TITLES[status], "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    for status in (400, 401, 403, 404, 409, 413, 422, 429, 500, 503)}

bearer = HTTPBearer(auto_error=False, description="API key (sr_…), session token (srs_…) or OIDC access token")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


# -- who may call -------------------------------------------------------------------------------


def rule(roles: frozenset[str], audited: bool) -> dict[str, Any]:
    """Route options: the authorization dependency and the published rule."""

    def authorize(request: Request, creds: Credentials) -> None:
        try:
            p = request.app.state.accounts.authenticate(f"Bearer {creds.credentials}" if creds else None)
        except Unauthenticated as e:  # one answer, whichever part of the credential was wrong
            raise Unauthenticated("authentication required") from e
        admit(request, p, roles, "call this route")
        request.state.principal = p

    return {"dependencies": [Depends(authorize)], "responses": ERROR_RESPONSES,
            "openapi_extra": {"x-strongroom-roles": sorted(roles), "x-strongroom-audited": audited}}


def admit(request: Request, p: Principal, roles: frozenset[str], what: str) -> None:
    """The checks every authenticated request passes, API or console: the per-principal rate limit,
    the role, and the second factor for the roles that need one."""
    wait = request.app.state.rate_limiter.take(f"principal:{p.id}")
    if wait:
        raise RateLimited("rate limit exceeded", wait)
    if p.role not in roles:
        raise Forbidden(f"role {p.role} may not {what}")
    if p.role in MFA_ROLES and not p.mfa:
        raise Forbidden(f"role {p.role} needs multi-factor authentication")


def throttle_sign_in(request: Request, name: str) -> None:
    """The sign-in limits: per address and per address + name (429 before any password is hashed)."""
    request.state.signing_in = name  # who a refusal is counted under (`note_denied`)
    client = request.client.host if request.client else "?"
    limiter = request.app.state.login_limiter
    if (wait := limiter.take(f"{client}|{name}")) or limiter.take(client):
        raise RateLimited("too many sign-in attempts", wait)


def public(reason: str) -> dict[str, Any]:
    """Route options of an API route that takes no bearer token: the credential exchanges (sign-in,
    enrolment). `reason` is published as its rule."""
    return {"responses": ERROR_RESPONSES, "openapi_extra": {"x-strongroom-roles": [reason],
                                                            "x-strongroom-audited": False}}


def principal(request: Request) -> Principal:
    """The principal `rule` authenticated for this request."""
    p: Principal = request.state.principal
    return p


def parse_time(value: str | None, name: str) -> datetime | None:
    """An instant from a query parameter (ISO-8601 with a zone); 400 naming the parameter."""
    return parse_instant_arg(value, name)


def json_response(body: bytes, status_code: int = 200) -> Response:
    return Response(body, status_code=status_code, media_type="application/json")


# -- one error shape ----------------------------------------------------------------------------


PREVIEWABLE = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})  # never SVG: it can script
EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif", "image/webp": ".webp",
              "application/pdf": ".pdf", "audio/ogg": ".ogg", "audio/mpeg": ".mp3", "video/mp4": ".mp4",
              "text/plain": ".txt"}


def attachment_response(att: Attachment, name: str, inline: bool) -> Response:
    """An attachment's bytes as a browser may safely receive them: only raster images are ever
    shown inline; everything else is a download of an opaque type, sandboxed, never cached."""
    mime = att.mime_type.split(";")[0].strip().lower()
    if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]{0,60}/[a-z0-9][a-z0-9.+-]{0,60}", mime):
        mime = "application/octet-stream"  # (the type came in a webhook: never echo it unchecked)
    shown = inline and mime in PREVIEWABLE
    filename = name + EXTENSIONS.get(mime, ".bin")
    return Response(att.data, media_type=mime if shown else "application/octet-stream", headers={
        "Content-Disposition": f'{"inline" if shown else "attachment"}; filename="{filename}"',
        "Content-Security-Policy": "default-src 'none'; sandbox", "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store", "X-Attachment-SHA256": att.sha256, "X-Attachment-Type": mime})


def problem_body(status: int, code: str, detail: str, title: str | None = None, **extensions: Any) -> bytes:
    doc = {"type": "about:blank", "title": title or TITLES.get(status, "Error"), "status": status,
           "code": code, "detail": detail, **extensions}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def problem(status: int, code: str, detail: str, title: str | None = None,
            headers: dict[str, str] | None = None, **extensions: Any) -> Response:
    """An RFC 9457 problem document."""
    return Response(problem_body(status, code, detail, title, **extensions), status_code=status,
                    media_type=PROBLEM, headers=headers)


def error_problem(e: StrongroomError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    if isinstance(e, RateLimited):
        headers = {"Retry-After": str(int(e.retry_after) + 1)}
    return problem(e.status, e.code, str(e), e.title, headers=headers, **e.extensions())


def note_denied(request: Request, status: int, code: str) -> None:
    """A refused API request, counted for the sealed audit stream (`audit.denied`): 401, 403, 429,
    and a 404 answered to an authenticated reader (another tenant's record looks missing)."""
    denied = getattr(request.app.state, "denied", None)
    p = getattr(request.state, "principal", None)
    if denied is None or not request.url.path.startswith(("/api/", "/console/")) or not (
            status in (401, 403, 429) or (status == 404 and p is not None)):
        return
    if p is not None:
        who = f"{p.via}:{p.id}:{p.name}"
    elif getattr(request.state, "signing_in", None):
        who = f"sign-in:{request.state.signing_in}"
    else:
        who = presented(request.headers.get("authorization"))
    route = getattr(request.scope.get("route"), "path", None) or request.url.path
    denied.note(who, request.client.host if request.client else "?", f"{request.method} {route}", code)


def _validation_errors(e: RequestValidationError) -> list[dict[str, Any]]:
    """Where and why, never what: `input` and `ctx` can hold a submitted password or token."""
    return [{"loc": [str(part) for part in err.get("loc", ())], "msg": str(err.get("msg", "")),
             "type": str(err.get("type", ""))} for err in e.errors()]


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app answers with is a problem document (and the OpenAPI document says so)."""
    schema = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = schema()
            doc.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
            for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 shape, which we never send
                doc["components"]["schemas"].pop(name, None)
            for path in doc.get("paths", {}).values():  # routes outside `rule` (the webhook) get FastAPI's 422
                for op in path.values():
                    if "422" in op.get("responses", {}):
                        op["responses"]["422"] = ERROR_RESPONSES[422]
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend its schema

    @app.exception_handler(StrongroomError)
    async def _ours(request: Request, e: StrongroomError) -> Response:
        if e.status >= 500:
            log.error("api.error", code=e.code, error=type(e).__name__)
        note_denied(request, e.status, e.code)
        pages = getattr(request.app.state, "error_page", None)  # the console answers with a page
        if pages is not None and request.url.path.startswith("/console/"):
            response: Response = pages(request, e)
            return response
        return error_problem(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, e: RequestValidationError) -> Response:
        return problem(422, "invalid_request", "the request does not match the operation's schema",
                       errors=_validation_errors(e))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, e: StarletteHTTPException) -> Response:
        detail = e.detail if isinstance(e.detail, str) else TITLES.get(e.status_code, "Error")
        return problem(e.status_code, HTTP_CODES.get(e.status_code, f"http_{e.status_code}"), detail,
                       headers=dict(e.headers) if e.headers else None)


# -- middleware ---------------------------------------------------------------------------------


class BodyLimit:
    """413 for API requests whose body exceeds `limit` bytes (declared or streamed); 400 for a NUL
    character anywhere in the request (no text column of either database can hold one)."""

    def __init__(self, app: ASGIApp, limit: int, prefix: str) -> None:
        self.app, self.limit, self.prefix = app, limit, prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            return await self.app(scope, receive, send)
        if "\x00" in scope["path"] or b"%00" in scope.get("query_string", b""):
            return await _refuse(send, 400, "nul_character", "NUL characters are not accepted")
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await _refuse(send, 413, "too_large", "request body too large")
        messages: list[Message] = []
        size = 0
        while True:  # the API's bodies are small (<= limit): buffer, then replay
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.limit:
                return await _refuse(send, 413, "too_large", "request body too large")
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        if b"\\u0000" in b"".join(m.get("body", b"") for m in messages):
            return await _refuse(send, 400, "nul_character", "NUL characters are not accepted")

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


async def _refuse(send: Send, status: int, code: str, detail: str) -> None:
    body = problem_body(status, code, detail)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", PROBLEM.encode()), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class SecurityHeaders:
    """Pure ASGI middleware, outermost: security headers on every response, one log line per
    request, and a 500 problem (with the headers) for anything that escaped every handler.

    The request line is logged without its query string (the subscription handshake carries
    the verify token there). Pure ASGI rather than `BaseHTTPMiddleware`, which costs more
    per request than the whole durable-ingest path.
    """

    HEADERS = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in self.HEADERS if k not in present]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as e:
            log.error("http.crashed", method=scope["method"], path=scope["path"], error=type(e).__name__)
            if status:
                raise  # the response had started: nothing better can be sent
            await _refuse(send_with_headers, 500, "internal_error", "the server could not answer this request")
        log.debug("http.request", method=scope["method"], path=scope["path"], status=status)
