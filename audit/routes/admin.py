"""Accounts and API keys (admin). An admin reads no archived content."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from audit.access import ADMIN, COMPLIANCE, Access, json_bytes
from audit.http import json_response, principal, rule


class UserRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is a mistake to report, not to ignore

    name: str = Field(min_length=1, max_length=200)
    role: str
    tenants: list[str] | None = Field(None, description="WABA ids; omit for all (compliance, admin, regulator)")


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is a mistake to report, not to ignore

    name: str = Field(min_length=1, max_length=200)
    role: str
    tenants: list[str] = Field(min_length=1)


def router(access: Access) -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["admin"])

    def ended(call: Callable[[], None]) -> Response:
        call()
        return Response(status_code=204)

    @r.get("/admin/principals", **rule(ADMIN, audited=True))
    def principals_list(request: Request) -> Response:
        return json_response(access.principals(principal(request)).body)

    @r.post("/admin/users", status_code=201, **rule(ADMIN, audited=False))
    def user_create(request: Request, body: UserRequest) -> Response:
        """A human account. The response holds a one-time enrolment code, never the person's secrets:
        they get their password and TOTP secret when they enrol (POST /auth/enrol). An account that
        reads content (auditor, compliance, regulator) works once a compliance officer approves it."""
        created = request.app.state.accounts.create_user(body.name, body.role, body.tenants, principal(request).actor,
                                                         enrol=True)
        return json_response(json_bytes(created), 201)

    @r.post("/admin/api-keys", status_code=201, **rule(ADMIN, audited=False))
    def key_create(request: Request, body: KeyRequest) -> Response:
        """A service API key (ingest or auditor); the token is in this response only. An auditor key
        works once a compliance officer approves it."""
        created = request.app.state.accounts.create_api_key(body.name, body.role, body.tenants,
                                                            principal(request).actor)
        return json_response(json_bytes(created), 201)

    @r.delete("/admin/api-keys/{key_id}", status_code=204, **rule(ADMIN, audited=False))
    def key_revoke(request: Request, key_id: str) -> Response:
        return ended(lambda: request.app.state.accounts.revoke_api_key(key_id, principal(request).actor))

    @r.post("/approvals/{principal_id}", **rule(COMPLIANCE, audited=False))
    def approve(request: Request, principal_id: str) -> Response:
        """Let an account or key that reads content work: a compliance officer other than its
        creator, whose tenants cover its tenants, approves it (an admin alone reaches no content)."""
        return json_response(json_bytes(request.app.state.accounts.approve(principal_id, principal(request))))

    @r.post("/admin/users/{principal_id}/disable", status_code=204, **rule(ADMIN, audited=False))
    def user_disable(request: Request, principal_id: str) -> Response:
        return ended(lambda: request.app.state.accounts.disable_user(principal_id, principal(request).actor))

    return r
