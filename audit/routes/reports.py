"""Reports: completeness per number and day, retention (schedule and overdue), violations."""

from __future__ import annotations

from datetime import date

from fastapi import APIRouter, Query, Request, Response

from audit.access import READERS, TRAIL_READERS, Access
from audit.http import json_response, principal, rule


def router(access: Access) -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["reports"])

    @r.get("/reports/completeness", **rule(READERS, audited=True))
    def completeness(request: Request, day: date | None = None, stream: str | None = Query(None, max_length=128)
                     ) -> Response:
        """The newest sealed completeness report per number for `day` (default yesterday, UTC)."""
        return json_response(access.completeness(principal(request), day, stream).body)

    @r.get("/reports/retention", **rule(READERS, audited=True))
    def retention(request: Request) -> Response:
        """The schedule in force and objects overdue for disposition (expected: none)."""
        return json_response(access.retention(principal(request)).body)

    @r.get("/violations", **rule(READERS, audited=True))
    def violations(request: Request, stream: str | None = Query(None, max_length=128),
                   type: str | None = Query(None, max_length=64)) -> Response:
        """Compliance violations (consent, window, template, pricing) with their evidence."""
        return json_response(access.violations(principal(request), stream, type).body)

    @r.get("/proofs/consistency", **rule(READERS | TRAIL_READERS, audited=True))
    def consistency(request: Request, stream: str = Query(..., max_length=128), from_size: int = Query(..., ge=1),
                    to_size: int | None = Query(None, ge=1)) -> Response:
        """An RFC 9162 consistency proof between two tree sizes of a number's log (hashes only): what
        a verifier needs to check a bundle's snapshot against a checkpoint an outside holder keeps."""
        return json_response(access.consistency(principal(request), stream, from_size, to_size).body)

    return r
