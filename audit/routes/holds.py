"""Legal holds: list (an audited read), place and release (compliance)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from archiver.errors import Forbidden, NotFound
from audit.access import COMPLIANCE, READERS, Access, hold_view, json_bytes
from audit.http import json_response, principal, rule
from policies.holds import Scope


class HoldRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is a mistake to report, not to ignore

    matter: str = Field(min_length=1, max_length=200)
    streams: list[str] = Field(default_factory=list, max_length=1000)
    phones: list[str] = Field(default_factory=list, max_length=1000)
    conversations: list[str] = Field(default_factory=list, max_length=1000)
    start: str | None = Field(None, alias="from", description="ISO-8601, inclusive")
    end: str | None = Field(None, alias="to", description="ISO-8601, exclusive")


class ReleaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is a mistake to report, not to ignore

    reason: str = Field(min_length=1, max_length=2000)


def router(access: Access) -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["holds"])
    archive = access.archive

    @r.get("/holds", **rule(READERS, audited=True))
    def holds_list(request: Request, include_released: bool = True) -> Response:
        return json_response(access.holds(principal(request), include_released).body)

    @r.post("/holds", status_code=201, **rule(COMPLIANCE, audited=False))
    def hold_place(request: Request, body: HoldRequest) -> Response:
        """Place a legal hold (S3 legal hold on every object in scope, and on later ones)."""
        p = principal(request)
        if p.tenants is not None and (not body.streams or not all(access.visible_stream(p, s) for s in body.streams)):
            raise Forbidden("a tenant-scoped hold must name numbers of your tenants")
        h = archive.holds().place(body.matter, Scope(streams=body.streams, phones=body.phones,
                                                     subjects=body.conversations, start=body.start,
                                                     end=body.end), p.actor)
        return json_response(json_bytes(hold_view(h)), 201)

    @r.post("/holds/{hold_id}/release", **rule(COMPLIANCE, audited=False))
    def hold_release(request: Request, hold_id: str, body: ReleaseRequest) -> Response:
        p = principal(request)
        if archive.settings.mode == "regulated":
            raise Forbidden("regulated mode: a hold release needs four eyes: POST /api/v1/proposals "
                            '{"action": "hold_release", "params": {"hold": ...}} for a second person to approve')
        holds = archive.holds()
        h = holds.get(hold_id)
        if not access.hold_visible(p, h.scope):
            raise NotFound(f"no hold {hold_id}")  # the same answer as for a hold that does not exist
        lifted = holds.release(hold_id, p.actor, body.reason)
        return json_response(json_bytes({"id": hold_id, "objects_released": len(lifted)}))

    return r
