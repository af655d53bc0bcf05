"""One error shape: every status the API answers an error with is an RFC 9457 problem document
(`application/problem+json`, a stable `code`) carrying the security headers, and no error body
echoes a submitted password, one-time code or token. The CLI maps the same errors to one table
of exit codes (docs/errors.md)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from archiver import errors
from audit import access as access_module
from strongroom import payloads as p
from strongroom.app import create_app
from strongroom.cli import app as cli_app
from tests.test_api import World, world  # noqa: F401  (the module's archive, accounts and tokens)

SECRET_PASSWORD = "hunter2-Secret-Passw0rd"
SECRET_OTP = "918273"


def _assert_problem(r: Any, status: int, *secrets: str) -> dict[str, Any]:
    assert r.status_code == status, (status, r.status_code, r.text)
    assert r.headers["content-type"] == "application/problem+json", (status, r.headers["content-type"])
    for header in ("x-content-type-options", "x-frame-options", "cache-control", "content-security-policy",
                   "strict-transport-security", "referrer-policy"):
        assert header in r.headers, (status, header)
    doc: dict[str, Any] = r.json()
    assert doc["status"] == status and doc["code"] and doc["title"] and isinstance(doc["detail"], str)
    for s in secrets:
        assert s not in r.text, f"{status} echoed a submitted secret"
    return doc


def test_every_error_status_is_a_problem_document_without_submitted_secrets(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    c = world.client
    auditor = {"Authorization": f"Bearer {world.tokens['auditor']}"}
    compliance = {"Authorization": f"Bearer {world.tokens['compliance']}"}
    seen: dict[int, str] = {}

    def check(r: Any, status: int, *secrets: str) -> None:
        seen[status] = _assert_problem(r, status, *secrets)["code"]

    check(world.get("/api/v1/search", q="trade AND ("), 400)
    bad_token = "sr_01ABCDEFGHJKMNPQRSTVWXYZ00_" + "x" * 43
    check(c.get("/api/v1/search", params={"q": "x"}, headers={"Authorization": f"Bearer {bad_token}"}), 401,
          bad_token)
    check(world.get("/api/v1/search", "ingest", q="trade"), 403)
    check(world.get("/api/v1/records/nowhere/1"), 404)
    check(c.get("/api/v1/no-such-route", headers=auditor), 404)
    check(c.put("/api/v1/search", headers=auditor), 405)
    check(c.post("/api/v1/holds/nope/release", headers=compliance, json={"reason": "x"}), 404)
    check(c.post("/api/v1/send-log", content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                 headers={"Authorization": f"Bearer {world.tokens['ingest']}", "Content-Type": "application/json"}),
          413)
    # 422: FastAPI's validation error, which by default returns what was submitted in `input`
    check(c.post("/api/v1/auth/session", json={"name": "reviewer", "password": SECRET_PASSWORD, "otp": "12x456"}),
          422, SECRET_PASSWORD)
    check(c.post("/api/v1/auth/session", json={"name": "", "password": SECRET_PASSWORD, "otp": SECRET_OTP}),
          422, SECRET_PASSWORD, SECRET_OTP)
    check(c.post("/api/v1/auth/session", json={"name": "nobody", "password": SECRET_PASSWORD, "otp": SECRET_OTP}),
          401, SECRET_PASSWORD, SECRET_OTP)
    check(world.get("/api/v1/search", q="trade", limit=0), 422)

    # 409: a hold released twice
    hold = c.post("/api/v1/holds", headers=compliance, json={"matter": "E-1", "streams": [p.PNID]}).json()
    assert c.post(f"/api/v1/holds/{hold['id']}/release", headers=compliance, json={"reason": "done"}).status_code == 200
    check(c.post(f"/api/v1/holds/{hold['id']}/release", headers=compliance, json={"reason": "again"}), 409)

    # 429: the sign-in limiter
    limited = TestClient(create_app(world.archive))
    statuses = [limited.post("/api/v1/auth/session", json={"name": "x", "password": SECRET_PASSWORD,
                                                            "otp": SECRET_OTP}) for _ in range(12)]
    check(statuses[-1], 429, SECRET_PASSWORD, SECRET_OTP)
    assert "retry-after" in statuses[-1].headers

    # 503: the access event cannot be written, so nothing is returned
    def broken(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("audit store down")

    monkeypatch.setattr(access_module, "append_audit", broken)
    check(world.get("/api/v1/search", q="trade"), 503)
    monkeypatch.undo()

    # 500: a bug anywhere still answers a bare problem with the headers, naming nothing inside
    def crash(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("boom: internal detail that must not leak")

    monkeypatch.setattr(world.archive, "search_index", crash)
    r = world.get("/api/v1/search", q="trade")
    check(r, 500)
    assert "internal detail" not in r.text and "Traceback" not in r.text
    monkeypatch.undo()

    # the webhook keeps Meta's statuses, in the same shape
    check(c.post("/webhooks/whatsapp", content=b"{}", headers={"X-Hub-Signature-256": "sha256=00"}), 401)
    check(c.get("/webhooks/whatsapp", params={"hub.mode": "subscribe", "hub.verify_token": "wrong",
                                              "hub.challenge": "1"}), 403)
    assert set(seen) >= {400, 401, 403, 404, 405, 409, 413, 422, 429, 500, 503}
    assert len(set(seen.values())) >= 10  # stable codes that tell the cases apart


def test_the_cli_maps_errors_to_the_documented_exit_codes() -> None:
    """The table in docs/errors.md is the one the error classes carry."""
    from pathlib import Path

    table = (Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text()
    for cls in (errors.InvalidInput, errors.NotFound, errors.Unauthenticated, errors.Forbidden,
                errors.StateConflict, errors.RateLimited, errors.Unavailable, errors.ConfigurationError,
                errors.VerificationError, errors.StrongroomError):
        assert f"| `{cls.__name__}` | {cls.status} | `{cls.code}` | {cls.exit_code} |" in table, cls.__name__
    assert cli_app.info.cls is not None  # the root group is the one that maps errors to exit codes
