"""The consent and template ledgers as of an instant."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response

from audit.access import READERS, Access
from audit.http import json_response, parse_time, principal, rule


def router(access: Access) -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["ledgers"])

    @r.get("/ledgers/consent", **rule(READERS, audited=True))
    def consent(request: Request, stream: str = Query(..., max_length=128), subject: str = Query(..., max_length=40),
                category: str = Query("marketing", max_length=32), at: str | None = Query(None)) -> Response:
        """Consent of a contact (subject id) on a number as of `at` (default now), with its history."""
        return json_response(access.consent(principal(request), stream, subject, category,
                                            parse_time(at, "at")).body)

    @r.get("/ledgers/templates", **rule(READERS, audited=True))
    def template(request: Request, tenant: str = Query(..., max_length=64), name: str = Query(..., max_length=512),
                 language: str = Query(..., max_length=32), at: str | None = Query(None)) -> Response:
        """A template's approval status, category and body versions as of `at` (default now)."""
        return json_response(access.template(principal(request), tenant, name, language, parse_time(at, "at")).body)

    return r
