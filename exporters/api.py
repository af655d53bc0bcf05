"""Export routes of the auditor API: request a bundle (a job), follow it, download it.

Producing a bundle needs the ``auditor`` role (or the break-glass ``regulator``), and a tenant-scoped
principal's bundle never reaches past its tenants. A job is visible only to whoever requested it.
The download is an audited read: its access event carries the manifest's SHA-256, which pins
every byte of the bundle, and it is recorded as a transfer in the job's chain of custody.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from archiver.errors import Forbidden, InvalidInput, NotFound, StateConflict
from audit.access import Access, json_bytes
from audit.http import json_response, parse_time, principal, rule
from audit.searchlang import parse
from exporters.bundle import Custody, ExportScope
from exporters.jobs import ExportJobs

EXPORTERS = frozenset({"auditor", "regulator"})


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is a mistake to report, not to ignore

    matter: str = Field(min_length=1, max_length=200)
    query: str | None = Field(None, max_length=2000, description="the reviewers' search language")
    streams: list[str] = Field(default_factory=list, max_length=1000)
    conversations: list[str] = Field(default_factory=list, max_length=10000)
    participants: list[str] = Field(default_factory=list, max_length=1000,
                                    description="phone numbers: the conversations of whoever held each in the range")
    tenants: list[str] | None = Field(None, max_length=100)
    start: str | None = Field(None, alias="from", description="ISO-8601 with zone, inclusive")
    end: str | None = Field(None, alias="to", description="ISO-8601 with zone, exclusive")
    requested_by: str | None = Field(None, max_length=200, description="the requesting party, if not the caller")
    request_ref: str | None = Field(None, max_length=200)
    approved_by: str | None = Field(None, max_length=200)


def export_router(jobs: ExportJobs, access: Access) -> APIRouter:
    router = APIRouter(prefix="/api/v1")

    def own(request: Request, job_id: str) -> dict[str, Any]:
        job = jobs.get(job_id)
        if job is None or job["principal_id"] != principal(request).id:
            raise NotFound("no such export")
        return job

    @router.post("/exports", tags=["exports"], status_code=202, **rule(EXPORTERS, audited=False))
    def create(request: Request, body: ExportRequest) -> Response:
        """Start a bundle for a query or scope; returns the job id (poll it, then download)."""
        p = principal(request)
        tenants: list[str] | None = body.tenants
        if p.tenants is not None:
            tenants = sorted(set(body.tenants or p.tenants) & p.tenants)
            if not tenants:
                raise Forbidden("the scope names none of your tenants")
        if body.query is not None:
            parse(body.query)  # a syntax error is a 400 now, not a failed job later
        start: datetime | None = parse_time(body.start, "from")
        end: datetime | None = parse_time(body.end, "to")
        conversations = set(body.conversations)
        if body.participants:  # resolved now: the job keeps subject ids, never a phone number in clear
            # within the caller's tenants: what other tenants hold is not theirs to learn, even by a 400
            found, nobody = jobs.exporter().participants(body.participants, start, end, p.tenants)
            if nobody:
                raise InvalidInput(f"participants {nobody} (by position) held no archived conversation "
                                   "in the time range")
            conversations.update(found)
        scope = ExportScope(body.matter, body.query, tenants, body.streams, sorted(conversations), start, end)
        job_id = jobs.submit(scope, Custody(body.requested_by or p.actor, body.approved_by, body.request_ref),
                             p.actor, p.id)
        return json_response(json_bytes({"id": job_id, "state": "queued"}), 202)

    @router.get("/exports/{job_id}", tags=["exports"], **rule(EXPORTERS, audited=True))
    def status(request: Request, job_id: str) -> Response:
        job = own(request, job_id)
        return json_response(access.answer(principal(request), "export.status", {"export_id": job_id}, job,
                                           (job["counts"] or {}).get("records", 0), [job_id]).body)

    @router.delete("/exports/{job_id}", status_code=204, **rule(EXPORTERS, audited=False))
    def delete(request: Request, job_id: str) -> Response:
        """Delete a finished bundle from the server once it has been handed over (audited)."""
        job = own(request, job_id)
        if job["state"] != "done":
            raise StateConflict(f"export is {job['state']}")
        jobs.delete(job_id, principal(request).actor)
        return Response(status_code=204)

    @router.get("/exports/{job_id}/download", tags=["exports"], **rule(EXPORTERS, audited=True),
                response_class=StreamingResponse)
    def download(request: Request, job_id: str) -> StreamingResponse:
        """The bundle as a zip (verify it with `strongroom verify-bundle FILE.zip --public-key …`)."""
        job = own(request, job_id)
        if job["state"] != "done":
            raise StateConflict(f"export is {job['state']}")
        access.event(principal(request), "export.download", {"export_id": job_id}, job["manifest_sha256"],
                     (job["counts"] or {}).get("records", 0), [job_id])
        jobs.record_transfer(job_id, principal(request).actor, "download through the auditor API")
        return StreamingResponse(jobs.download(job_id), media_type="application/zip", headers={
            "Content-Disposition": f'attachment; filename="strongroom-export-{job_id}.zip"'})

    return router
