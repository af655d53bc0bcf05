"""FastAPI app factory: the webhook receiver and health, behind security headers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import structlog
from fastapi import FastAPI

from archiver import crypto
from archiver.inbox import GroupCommitter
from archiver.normalize import append_audit
from archiver.webhook import webhook_router
from audit.access import Access
from audit.auth import RateLimiter
from audit.denied import DENIED_KIND, DeniedLog
from audit.http import BodyLimit, SecurityHeaders, install_error_handlers, rule
from audit.routes import api_routers
from audit.routes.auth import ANY_ROLE
from exporters.api import export_router
from exporters.jobs import ExportJobs, ExportLimits
from review.api import review_router
from strongroom import __version__
from strongroom.runtime import Archive

log = structlog.get_logger("strongroom.app")


def create_app(archive: Archive) -> FastAPI:
    """The HTTP surface. Normalising and sealing run elsewhere (`strongroom worker`)."""
    committer = GroupCommitter(archive.inbox)
    settings = archive.settings
    jobs = ExportJobs(archive.engine, archive.keyring, settings.data_dir / "exports", archive.exporter,
                      ExportLimits(settings.export_max_active, settings.export_max_stored,
                                   timedelta(days=settings.export_ttl_days)))

    def seal_denied(batch: list[dict[str, object]]) -> None:
        for details in batch:
            append_audit(archive.engine, archive.keyring, DENIED_KIND, "denied", str(details["who"]), details)

    denied = DeniedLog(seal_denied, window=settings.denied_window_seconds)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        jobs.recover()  # exports a previous process left unfinished
        denied.start()
        try:
            yield
        finally:
            committer.close()
            denied.close()

    # No interactive docs; the schema is served to authenticated callers only. The only routes
    # without a bearer token are the webhook (HMAC-signed), health, and the sign-in exchanges.
    app = FastAPI(title="strongroom", version=__version__, docs_url=None, redoc_url=None, redirect_slashes=False,
                  openapi_url=None, lifespan=lifespan,
                  description="Auditor API of the strongroom WhatsApp archive. Every read is itself audited.")
    access = Access(archive)
    app.include_router(webhook_router(committer, settings.secret("verify_token"), settings.max_body_bytes))
    for router in api_routers(access):
        app.include_router(router)
    app.include_router(export_router(jobs, access))
    app.include_router(review_router(access, archive))
    from console.web import install_console

    key_path = settings.secrets_dir / "console_key"
    crypto.ensure_secret_file(key_path)
    sso = None
    if settings.oidc_client_id and settings.oidc_authorization_endpoint and settings.oidc_token_endpoint:
        from console.web import Sso

        sso = Sso(settings.oidc_client_id,
                  settings.oidc_client_secret.get_secret_value() if settings.oidc_client_secret else None,
                  settings.oidc_authorization_endpoint, settings.oidc_token_endpoint)
    install_console(app, access, jobs, crypto.read_secret_file(key_path), settings.console_idle_seconds,
                    settings.console_secure_cookies, sso)
    # what the routes read from app.state: accounts and limiters (`audit.http.rule`), export jobs
    app.state.accounts = archive.accounts()
    app.state.rate_limiter = RateLimiter(settings.api_rate_per_minute)
    app.state.login_limiter = RateLimiter(settings.login_rate_per_minute)
    app.state.export_jobs = jobs
    app.state.denied = denied
    install_error_handlers(app)

    @app.get("/api/v1/openapi.json", tags=["meta"], include_in_schema=False, **rule(ANY_ROLE, audited=False))
    def openapi() -> dict[str, object]:
        """This API's OpenAPI document (also printed by `strongroom openapi`)."""
        return app.openapi()

    @app.get("/healthz", tags=["health"])
    def health() -> dict[str, str]:
        """Liveness only: says nothing about the archive's contents or configuration."""
        return {"status": "ok"}

    app.add_middleware(BodyLimit, limit=settings.api_max_body_bytes, prefix="/api/")
    app.add_middleware(BodyLimit, limit=64 * 1024, prefix="/console/")  # the console posts small forms only
    if settings.trusted_proxies:  # only then is X-Forwarded-For the client (uvicorn's own handling is off)
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=[h.strip() for h in settings.trusted_proxies.split(",")])
    app.add_middleware(SecurityHeaders)
    return app
