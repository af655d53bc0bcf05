"""FastAPI app factory: the webhook receiver and health, behind security headers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from starlette.types import ASGIApp

from archiver.inbox import GroupCommitter
from archiver.webhook import webhook_router
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

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            committer.close()

    # No interactive docs or schema routes: the only unauthenticated routes are the webhook
    # (HMAC-signed) and health.
    app = FastAPI(title="strongroom", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None, lifespan=lifespan)
    app.include_router(webhook_router(committer, archive.settings.secret("verify_token"),
                                      archive.settings.max_body_bytes))

    @app.get("/healthz", tags=["health"])
    def health() -> dict[str, str]:
        """Liveness only: says nothing about the archive's contents or configuration."""
        return {"status": "ok"}

    app.add_middleware(SecurityHeaders)
    return app


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
