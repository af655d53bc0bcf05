"""Supervision over the API: the review queue and its items (reads audited), the actions on items,
the review trail of a message, policies (their versions, a change, a retroactive run, a dry run)
and the supervision report."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from archiver.errors import NotFound
from archiver.sqlutil import as_utc  # (a query's instant without an offset is UTC)
from audit.access import COMPLIANCE, Access, json_bytes
from audit.http import json_response, principal, rule
from review.reads import EXAMINERS, POLICY_READERS, REVIEWERS, Reviews

Action = Literal["claim", "release", "assign", "note", "escalate", "close"]


class ActionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    disposition: str | None = Field(None, max_length=32, description="close: no_issue, issue_action_taken, "
                                                                      "false_positive")
    reason: str | None = Field(None, max_length=2000, description="close and escalate: why")
    term: str | None = Field(None, max_length=1000, description="close as false_positive: the term that misfired")
    note: str | None = Field(None, max_length=4000, description="note: its text")
    to: str | None = Field(None, max_length=200, description="assign: the reviewer's name")


class BulkRequest(ActionRequest):
    ids: list[str] = Field(min_length=1, max_length=500)
    action: Action


class PolicyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    document: dict[str, Any]


class RangeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: AwareDatetime = Field(alias="from")
    end: AwareDatetime = Field(alias="to")


class DryRunRequest(RangeRequest):
    name: str = Field("dry-run", max_length=100)
    document: dict[str, Any]


class StaffRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    people: list[str] = Field(default_factory=list, max_length=1000)


def review_router(access: Access, archive: Any) -> APIRouter:
    """The supervision routes; `archive` gives `supervision()` and `review_queue()`."""
    r = APIRouter(prefix="/api/v1", tags=["review"])
    reviews = Reviews(access)

    @r.get("/review/items", **rule(REVIEWERS | EXAMINERS, audited=True))
    def items(request: Request, queue: str | None = Query(None, max_length=100),
              state: Literal["open", "closed", "all"] = "open", level: int | None = Query(None, ge=1, le=2),
              mine: bool = False, policy: str | None = Query(None, max_length=100),
              reason: Literal["flag", "sample", "minimum"] | None = None, overdue: bool = False,
              limit: int = Query(50, ge=1, le=500), after: str | None = Query(None, max_length=26)) -> Response:
        """Review items (terms and ids, never message text), oldest first, with the exact total."""
        return json_response(reviews.queue(principal(request), queue, state, level, mine, policy, reason, overdue,
                                           limit, after).body)

    @r.get("/review/items/{item_id}", **rule(REVIEWERS | EXAMINERS, audited=True))
    def item(request: Request, item_id: str) -> Response:
        """An item with its message, the thread around it, each hit's reason, its trail, and the
        previous and next open item of its queue."""
        return json_response(reviews.item(principal(request), item_id).body)

    @r.post("/review/items/bulk", **rule(REVIEWERS, audited=False))
    def bulk(request: Request, body: BulkRequest) -> Response:
        """One action on many items; each is checked and sealed on its own (`ok` false: why not)."""
        queue, who = archive.review_queue(), principal(request)
        fields = body.model_dump()
        done = queue.bulk(body.ids, lambda item_id: queue.do(item_id, who, body.action, fields))
        return json_response(json_bytes({"results": done}))

    @r.post("/review/items/{item_id}/{action}", **rule(REVIEWERS, audited=False))
    def action(request: Request, item_id: str, action: Action, body: ActionRequest) -> Response:
        """Claim, release, assign, note, escalate, or close (with a disposition and a reason)."""
        return json_response(json_bytes(archive.review_queue().do(item_id, principal(request), action,
                                                                   body.model_dump())))

    @r.get("/review/trail/{stream}/{seq}", **rule(REVIEWERS | EXAMINERS, audited=True))
    def trail(request: Request, stream: str, seq: int) -> Response:
        """The review trail of one message: the items made of it and every action on them."""
        if len(stream) > 128 or not 0 <= seq < 2**63:
            raise NotFound("no such record")
        return json_response(reviews.record_trail(principal(request), stream, seq).body)

    @r.get("/review/policies", **rule(POLICY_READERS, audited=True))
    def policies(request: Request) -> Response:
        """Every version of every review policy (document, SHA-256, who stored it, when)."""
        return json_response(reviews.policies(principal(request)).body)

    @r.put("/review/policies/{name}", status_code=201, **rule(COMPLIANCE, audited=False))
    def store_policy(request: Request, name: str, body: PolicyRequest) -> Response:
        """A new version of a policy (checked, then sealed on the audit stream)."""
        p = principal(request)
        made = archive.supervision().store_policy(name[:100], body.document, p.actor)
        archive.supervision().commit_seeds()  # this month's and next month's seed, now
        return json_response(json_bytes({"name": made.name, "version": made.version}), 201)

    @r.post("/review/policies/{name}/retro", **rule(COMPLIANCE, audited=False))
    def retro(request: Request, name: str, body: RangeRequest) -> Response:
        """Run the policy's newest version over messages sent in [from, to): items it makes are new
        (a message already an item of this policy stays as it is)."""
        made = archive.supervision().retro(name[:100], body.start, body.end)
        return json_response(json_bytes({"policy": name[:100], "items_made": made}))

    @r.post("/review/dry-run", **rule(EXAMINERS, audited=True))
    def dry_run(request: Request, body: DryRunRequest) -> Response:
        """What a policy document would have flagged and sampled in [from, to); nothing is stored."""
        return json_response(reviews.dry_run(principal(request), body.name, body.document, body.start,
                                             body.end).body)

    @r.put("/review/staff/{stream}", **rule(COMPLIANCE, audited=False))
    def staff(request: Request, stream: str, body: StaffRequest) -> Response:
        """Who sends from a number (names of principals): they never review its items."""
        p = principal(request)
        if not access.visible_stream(p, stream[:128]):
            raise NotFound("no such number")
        archive.review_queue().set_staff(stream[:128], [n[:200] for n in body.people], p.actor)
        return json_response(json_bytes({"stream": stream[:128], "people": sorted(set(body.people))}))

    @r.get("/review/report", **rule(EXAMINERS, audited=True))
    def report(request: Request, start: Annotated[datetime, Query(alias="from")],
               end: Annotated[datetime, Query(alias="to")]) -> Response:
        """Coverage (policy x number x month), reviewer activity, and per-policy and per-term hit
        and false-positive rates over [from, to)."""
        return json_response(reviews.report(principal(request), as_utc(start), as_utc(end)).body)

    return r
