"""FastAPI app factory and the in-process ingest worker (normalise + seal, every N seconds)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request, Response

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


class Worker(threading.Thread):
    """Normalises and seals in the background; errors are logged (without content) and retried."""

    def __init__(self, archive: Archive, interval: float) -> None:
        super().__init__(name="strongroom-worker", daemon=True)
        self.archive = archive
        self.interval = interval
        self.stopping = threading.Event()

    def run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            try:
                sealed = self.archive.process_pending()
                if sealed:
                    log.info("worker.sealed", records=sealed)
                failures = 0
            except Exception as e:  # keep going: every step is replayable from the inbox
                failures += 1
                log.error("worker.failed", error=type(e).__name__, detail=str(e)[:500], attempt=failures)
            self.stopping.wait(min(self.interval * (2 ** min(failures, 6)), 60.0))

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)


def create_app(archive: Archive, run_worker: bool = True) -> FastAPI:
    committer = GroupCommitter(archive.inbox)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        worker = Worker(archive, archive.settings.seal_interval_seconds) if run_worker else None
        if worker:
            worker.start()
        try:
            yield
        finally:
            if worker:
                worker.stop()
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

    @app.middleware("http")
    async def security_headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        response: Response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        # The request line is logged without its query string: the subscription handshake
        # carries the verify token there.
        log.info("http.request", method=request.method, path=request.url.path, status=response.status_code)
        return response

    return app
