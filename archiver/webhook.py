"""FastAPI router for Meta's webhook: the verification handshake and signed deliveries."""

from __future__ import annotations

import asyncio
import hmac

import structlog
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse

from archiver.errors import WebhookRejected
from archiver.inbox import GroupCommitter

log = structlog.get_logger("strongroom.webhook")
INLINE_PREPARE_BYTES = 256 * 1024


def webhook_router(committer: GroupCommitter, verify_token: str, max_body_bytes: int) -> APIRouter:
    router = APIRouter(tags=["webhook"])

    @router.get("/webhooks/whatsapp", response_class=PlainTextResponse)
    def verify_subscription(
        mode: str = Query("", alias="hub.mode"),
        token: str = Query("", alias="hub.verify_token"),
        challenge: str = Query("", alias="hub.challenge"),
    ) -> PlainTextResponse:
        """Meta's subscription handshake: echo `hub.challenge` when the token matches."""
        if mode == "subscribe" and hmac.compare_digest(token.encode(), verify_token.encode()):
            return PlainTextResponse(challenge)
        log.warning("webhook.verify_rejected", mode=mode)
        return PlainTextResponse("verification failed", status_code=403)

    @router.post("/webhooks/whatsapp")
    async def receive(request: Request) -> JSONResponse:
        """Store a signed delivery durably, then acknowledge it (200)."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body_bytes:
            return _reject(413, f"body of {declared} bytes exceeds the limit of {max_body_bytes}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                return _reject(413, f"body exceeds the limit of {max_body_bytes} bytes")
            chunks.append(chunk)
        data, header = b"".join(chunks), request.headers.get("x-hub-signature-256")
        try:
            # HMAC + AES-GCM cost microseconds for a normal body; only large ones (history
            # imports) are moved off the event loop.
            if size <= INLINE_PREPARE_BYTES:
                future = committer.submit(data, header)
            else:
                future = await run_in_threadpool(committer.submit, data, header)
        except WebhookRejected as e:
            return _reject(e.status, e.reason)
        receipt = await asyncio.wrap_future(future)  # resolves after the batch commit
        log.debug("webhook.stored", inbox_id=receipt.inbox_id, bytes=size, duplicate=receipt.duplicate)
        return JSONResponse({"ok": True, "duplicate": receipt.duplicate})

    return router


def _reject(status: int, reason: str) -> JSONResponse:
    log.warning("webhook.rejected", status=status, reason=reason)
    return JSONResponse({"ok": False, "error": reason, "errors": [reason], "status": status}, status_code=status)
