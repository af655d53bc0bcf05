"""Signing in and out: name + password + TOTP exchanged for a session token."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from audit.access import Access, json_bytes
from audit.auth import ROLES
from audit.http import Credentials, json_response, public, rule, throttle_sign_in

ANY_ROLE = frozenset(ROLES)


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is a mistake to report, not to ignore

    name: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=200)
    otp: str = Field(min_length=6, max_length=8, pattern=r"^\d+$")


class EnrolRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    code: str = Field(min_length=10, max_length=200)


def router(_access: Access) -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["auth"])

    @r.post("/auth/session", **public("credentials"))
    def login(request: Request, body: LoginRequest) -> Response:
        """Exchange name + password + TOTP code for a session token (shown once)."""
        throttle_sign_in(request, body.name)
        token, expires = request.app.state.accounts.login(body.name, body.password, body.otp)
        return json_response(json_bytes({"token": token, "expires_at": expires}))

    @r.post("/auth/enrol", **public("credentials"))
    def enrol(request: Request, body: EnrolRequest) -> Response:
        """First sign-in: exchange the one-time enrolment code for your password and TOTP secret
        (shown once, to you). Then sign in at POST /auth/session."""
        throttle_sign_in(request, body.name)
        return json_response(json_bytes(request.app.state.accounts.enrol(body.name, body.code)))

    @r.delete("/auth/session", status_code=204, **rule(ANY_ROLE, audited=False))
    def logout(request: Request, creds: Credentials) -> Response:
        if creds is not None:
            request.app.state.accounts.logout(creds.credentials)
        return Response(status_code=204)

    return r
