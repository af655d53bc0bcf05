"""Schemathesis over the published OpenAPI document: generated requests to every operation, each
sent with a credential the operation accepts, never get a 5xx, and every answer conforms to the
document — a documented status code, the documented content type (problem+json for errors) and a
body that matches the documented schema.

Driven through schemathesis' operation strategies with hypothesis directly (its pytest plugin does
not run under pytest 9)."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.test_api import World, world  # noqa: F401  (the module's archive, accounts and tokens)

PREFERENCE = ("regulator", "compliance", "admin", "auditor", "ingest")


def check(op: Any, auth: dict[str, str], calls: dict[str, int]) -> None:
    """Hypothesis-generated requests to one operation; any 5xx fails."""
    if op.path.endswith("/auth/session") and op.method.upper() == "DELETE":
        return  # would end the shared sessions of this module's tokens

    @given(case=op.as_strategy())
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case: Any) -> None:
        response = case.call(headers=auth)
        case.validate_response(response, checks=[not_a_server_error, status_code_conformance,
                                                 content_type_conformance, response_schema_conformance])
        calls[op.label] = calls.get(op.label, 0) + 1

    run()


def test_no_generated_request_gets_a_server_error(world: World) -> None:  # noqa: F811
    hdr = {"Authorization": f"Bearer {world.tokens['regulator']}"}
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", world.client.app, headers=hdr)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 18
    calls: dict[str, int] = {}
    for op in operations:
        roles = op.definition.raw.get("x-strongroom-roles", [])
        role = next((r for r in PREFERENCE if r in roles), "regulator")
        check(op, {"Authorization": f"Bearer {world.tokens[role]}"}, calls)
    assert len(calls) >= len(operations) - 1
