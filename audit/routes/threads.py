"""Conversations as threads."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response

from audit.access import READERS, Access
from audit.http import json_response, parse_time, principal, rule
from audit.routes.search import MAX_ID


def router(access: Access) -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["records"])

    @r.get("/conversations/{conversation}", **rule(READERS, audited=True))
    def thread(request: Request, conversation: str, stream: str | None = Query(None, max_length=128),
               start: str | None = Query(None, alias="from"), end: str | None = Query(None, alias="to"),
               limit: int = Query(500, ge=1, le=5000),
               after: int | None = Query(None, ge=0, le=MAX_ID, description="cursor: the last item's row")
               ) -> Response:
        """The conversation as it happened: messages in time order, each with its statuses, edits and
        revokes (as versions), reactions, attachments and provenance; gap markers of its numbers."""
        return json_response(access.thread(principal(request), conversation, stream, parse_time(start, "from"),
                                           parse_time(end, "to"), limit, after).body)

    return r
