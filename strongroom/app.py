"""FastAPI app factory: the webhook receiver and health, behind security headers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from starlette.types import ASGIApp

from archiver.inbox import GroupCommitter
from archiver.webhook import webhook_router
from audit.api import ANY_ROLE, api_router, configure_api, rule
from audit.auth import RateLimiter
from exporters.api import export_router
from exporters.jobs import ExportJobs
from strongroom import __version__
from strongroom.runtime import Archive

log = structlog.get_logger("strongroom.app")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
}


def create_app(archive: Archive) -> FastAPI:
    """The HTTP surface. Normalising and sealing run elsewhere (`strongroom worker`)."""
    committer = GroupCommitter(archive.inbox)
    jobs = ExportJobs(archive.engine, archive.keyring, archive.settings.data_dir / "exports", archive.exporter)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        jobs.recover()  # exports a previous process left unfinished
        try:
            yield
        finally:
            committer.close()

    # No interactive docs; the schema is served to authenticated callers only. The only routes
    # without a bearer token are the webhook (HMAC-signed), health, and the sign-in exchange.
    settings = archive.settings
    app = FastAPI(title="strongroom", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None, lifespan=lifespan,
                  description="Auditor API of the strongroom WhatsApp archive. Every read is itself audited.")
    app.include_router(webhook_router(committer, settings.secret("verify_token"), settings.max_body_bytes))
    app.include_router(api_router(archive))
    app.include_router(export_router(jobs, archive.engine, archive.keyring))
    app.state.export_jobs = jobs
    configure_api(app, RateLimiter(settings.api_rate_per_minute), RateLimiter(settings.login_rate_per_minute),
                  archive.accounts())

    @app.get("/api/v1/openapi.json", tags=["meta"], include_in_schema=False, **rule(ANY_ROLE, audited=False))
    def openapi() -> dict[str, object]:
        """This API's OpenAPI document (also printed by `strongroom openapi`)."""
        return app.openapi()

    @app.get("/healthz", tags=["health"])
    def health() -> dict[str, str]:
        """Liveness only: says nothing about the archive's contents or configuration."""
        return {"status": "ok"}

    app.add_middleware(BodyLimit, limit=settings.api_max_body_bytes, prefix="/api/")
    app.add_middleware(SecurityHeaders)
    return app


class BodyLimit:
    """413 for API requests whose body exceeds `limit` bytes (declared or streamed); 400 for a NUL
    character anywhere in the request (no text column of either database can hold one)."""

    def __init__(self, app: ASGIApp, limit: int, prefix: str) -> None:
        self.app, self.limit, self.prefix = app, limit, prefix

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            return await self.app(scope, receive, send)
        if "\x00" in scope["path"] or b"%00" in scope.get("query_string", b""):
            return await _refuse(send, 400, b'{"detail":"NUL characters are not accepted"}')
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await _too_large(send)
        messages, size = [], 0
        while True:  # the API's bodies are small (<= limit): buffer, then replay
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.limit:
                return await _too_large(send)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        if b"\\u0000" in b"".join(m.get("body", b"") for m in messages):
            return await _refuse(send, 400, b'{"detail":"NUL characters are not accepted"}')

        async def replay():  # type: ignore[no-untyped-def]
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


async def _too_large(send) -> None:  # type: ignore[no-untyped-def]
    await _refuse(send, 413, b'{"detail":"request body too large"}')


async def _refuse(send, status: int, body: bytes) -> None:  # type: ignore[no-untyped-def]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class SecurityHeaders:
    """Pure ASGI middleware: security headers on every response, one log line per request.

    The request line is logged without its query string (the subscription handshake carries
    the verify token there). Pure ASGI rather than `BaseHTTPMiddleware`, which costs more
    per request than the whole durable-ingest path.
    """

    HEADERS = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 0

        async def send_with_headers(message):  # type: ignore[no-untyped-def]
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in self.HEADERS if k not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)
        log.debug("http.request", method=scope["method"], path=scope["path"], status=status)
