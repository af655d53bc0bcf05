"""Four eyes over the API: irreversible decisions proposed by one principal, approved (and then
carried out) or rejected by another (`policies.proposals`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from audit.access import ADMIN, COMPLIANCE, Access, json_bytes
from audit.http import json_response, principal, rule

DECIDERS = COMPLIANCE | ADMIN  # which of them may decide what is the action's own rule


class ProposalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: str = Field(max_length=40)
    params: dict[str, Any] = Field(default_factory=dict)
    reason: str = Field(min_length=1, max_length=1000)
    hours: float = Field(72.0, gt=0, le=24 * 30)


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=1000)


def router(access: Access) -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["proposals"])
    archive = access.archive

    @r.post("/proposals", status_code=201, **rule(DECIDERS, audited=False))
    def propose(request: Request, body: ProposalRequest) -> Response:
        """Propose an erasure, a retention schedule, a hold release, a KEK or signing-key rotation;
        it is carried out when a second principal with the action's role approves it in time."""
        from datetime import timedelta

        made = archive.proposals().propose(principal(request), body.action, body.params, body.reason,
                                           timedelta(hours=body.hours))
        return json_response(json_bytes(made), 201)

    @r.get("/proposals", **rule(DECIDERS, audited=True))
    def proposals(request: Request, state: str | None = Query(None, max_length=16)) -> Response:
        """Proposals and their decisions (summaries: parameters naming a person stay encrypted)."""
        return json_response(access.proposals(principal(request), state).body)

    @r.post("/proposals/{proposal_id}/approve", **rule(DECIDERS, audited=False))
    def approve(request: Request, proposal_id: str, body: DecisionRequest) -> Response:
        """Approve someone else's proposal: it is carried out now; its outcome is in `result`."""
        return json_response(json_bytes(archive.proposals().approve(principal(request), proposal_id, body.reason)))

    @r.post("/proposals/{proposal_id}/reject", **rule(DECIDERS, audited=False))
    def reject(request: Request, proposal_id: str, body: DecisionRequest) -> Response:
        """Reject a proposal."""
        return json_response(json_bytes(archive.proposals().reject(principal(request), proposal_id, body.reason)))

    return r
