"""Send-log ingest: what the sending application sent through the Cloud API.

It lives with the API's routers rather than in `archiver/outbound.py` because it needs a
principal and a rule (`audit.http`); `archiver` never imports the read side."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from archiver.errors import Forbidden
from audit.access import Access, json_bytes
from audit.http import json_response, principal, rule

INGEST = frozenset({"ingest"})


class SendLogRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is a mistake to report, not to ignore

    tenant: str | None = Field(None, max_length=64)
    items: list[dict[str, Any]] = Field(min_length=1, max_length=1000)


def router(access: Access) -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["ingest"])
    archive = access.archive

    @r.post("/send-log", **rule(INGEST, audited=False))
    def send_log(request: Request, body: SendLogRequest) -> Response:
        """Archive Cloud API sends (idempotent by wamid) from the sending application."""
        p = principal(request)
        tenant = body.tenant or (next(iter(p.tenants)) if p.tenants and len(p.tenants) == 1 else None)
        if tenant is None or not p.sees(tenant):
            raise Forbidden("name one of your tenants")
        new = archive.send_log().record(body.items, tenant=tenant)
        return json_response(json_bytes({"accepted": len(body.items), "new": new}))

    return r
