"""Search and single records (with their inclusion proofs)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as FPath

from audit.access import READERS, Access
from audit.http import attachment_response, json_response, parse_time, principal, rule

MAX_ID = 2**63 - 1  # ids and seqs are SQL BIGINTs


def router(access: Access) -> APIRouter:
    r = APIRouter(prefix="/api/v1")

    @r.get("/search", tags=["search"], **rule(READERS, audited=True))
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
        filters = {k: v for k, v in {"stream": stream, "conversation": conversation, "direction": direction,
                                     "origin": origin, "type": type, "status": status,
                                     "template_name": template}.items() if v is not None}
        return json_response(access.search(principal(request), q, limit, cursor, filters, parse_time(start, "from"),
                                           parse_time(end, "to")).body)

    @r.get("/records/{stream}/{seq}", tags=["records"], **rule(READERS, audited=True))
    def record(request: Request, stream: str = FPath(..., max_length=128),
               seq: int = FPath(..., ge=0, le=MAX_ID)) -> Response:
        """One sealed record, decrypted, with its inclusion proof to the newest signed checkpoint."""
        return json_response(access.record(principal(request), stream, seq).body)

    @r.get("/attachments/{stream}/{seq}", tags=["records"], **rule(READERS, audited=True))
    def attachment(request: Request, stream: str = FPath(..., max_length=128),
                   seq: int = FPath(..., ge=0, le=MAX_ID)) -> Response:
        """The bytes of a stored attachment (the `media` record at stream/seq), decrypted and checked
        against the hashes it seals; always a download (`X-Attachment-SHA256` names the bytes)."""
        return attachment_response(access.attachment(principal(request), stream, seq),
                                   f"attachment-{stream}-{seq}", inline=False)

    return r
