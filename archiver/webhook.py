"""FastAPI router for Meta's webhook: the verification handshake and signed deliveries."""

from __future__ import annotations

import asyncio
import hmac
import json

import structlog
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from archiver.errors import WebhookRejected
from archiver.inbox import GroupCommitter

log = structlog.get_logger("strongroom.webhook")
INLINE_PREPARE_BYTES = 256 * 1024
# Refusals are RFC 9457 problems; the schema is the app's (`audit.http` adds it to the document).
_PROBLEM: dict[str, object] = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


def _refusals(*statuses: tuple[int, str]) -> dict[int | str, dict[str, object]]:
    return {status: {"description": why, "content": _PROBLEM} for status, why in statuses}


def webhook_router(committer: GroupCommitter, verify_token: str, max_body_bytes: int) -> APIRouter:
    router = APIRouter(tags=["webhook"])

    @router.get("/webhooks/whatsapp", response_class=PlainTextResponse,
                responses=_refusals((403, "verify token or mode wrong")))
    def verify_subscription(
        mode: str = Query("", alias="hub.mode"),
        token: str = Query("", alias="hub.verify_token"),
        challenge: str = Query("", alias="hub.challenge"),
    ) -> Response:
        """Meta's subscription handshake: echo `hub.challenge` when the token matches."""
        if mode == "subscribe" and hmac.compare_digest(token.encode(), verify_token.encode()):
            return PlainTextResponse(challenge)
        return _reject(403, "verification failed")

    @router.post("/webhooks/whatsapp", responses=_refusals((401, "unsigned or wrongly signed (nothing stored)"),
                                                           (413, "body over the limit (nothing stored)")))
    async def receive(request: Request) -> Response:
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


def _reject(status: int, reason: str) -> Response:
    """An RFC 9457 problem, like every other error of the service; Meta reads only the status."""
    log.warning("webhook.rejected", status=status, reason=reason)
    body = json.dumps({"type": "about:blank", "title": "Webhook rejected", "status": status,
                       "code": "webhook_rejected", "detail": reason}).encode()
    return Response(body, status_code=status, media_type="application/problem+json")
