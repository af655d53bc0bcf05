"""The auditor API's routers, one module per family. Each route states who may call it
(`audit.http.rule`); each route that reads archived data or ledger state calls `audit.access`,
which writes the one access event and enforces tenants, so the API, the CLI and the console read
the same way. Routes that change state call the policy that owns the change (holds, accounts,
send log), which puts it on the audit stream.

Why the routes of `policies` (holds, ledgers, reports) live here and not in `policies/`: every one
of them needs a principal, a rule and (for reads) the access layer, all of which belong to the
read side (`audit`); imports flow one way (archiver ← policies ← audit), so `policies` stays free
of HTTP and of who is asking, and is called the same way from the CLI and the worker.
"""

from __future__ import annotations

from fastapi import APIRouter

from audit.access import Access
from audit.routes import admin, auth, holds, ingest, ledgers, proposals, reports, search, threads, trail

PREFIX = "/api/v1"


def api_routers(access: Access) -> list[APIRouter]:
    """Every router of the auditor API (exports are added by `exporters.api`, supervision by
    `review.api`: both build on the access layer, which does not import them)."""
    return [module.router(access) for module in (search, threads, ledgers, holds, reports, trail, ingest,
                                                 auth, admin, proposals)]
