"""The archive's own audit trail."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response

from audit.access import TRAIL_READERS, Access
from audit.http import json_response, parse_time, principal, rule
from audit.routes.search import MAX_ID


def router(access: Access) -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["reports"])

    @r.get("/audit-trail", **rule(TRAIL_READERS, audited=True))
    def audit_trail(request: Request, start: str | None = Query(None, alias="from"),
                    end: str | None = Query(None, alias="to"), limit: int = Query(1000, ge=1, le=10000),
                    after: int = Query(0, ge=0, le=MAX_ID)) -> Response:
        """The archive's own audit stream (accesses, holds, keys, decisions), decrypted."""
        return json_response(access.audit_trail(principal(request), parse_time(start, "from"), parse_time(end, "to"),
                                                limit, after).body)

    return r
