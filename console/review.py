"""The console's supervision pages (review/, review/reads.py): the queue, an item's review,
policies with their editor and dry run, and the report with its charts.

Each page showing archived data or review state is one read of `review.reads.Reviews`, so one
access event; each action is one `review.queue.ReviewQueue` action, sealed on the audit stream.
Nothing here puts message text or a policy's terms in a URL: filters in links are ids and flags.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from archiver.errors import InvalidInput, NotFound
from audit.access import COMPLIANCE
from audit.auth import Principal
from review.queue import ACTIONS, DISPOSITIONS, ReviewQueue
from review.reads import EXAMINERS, POLICY_READERS, REVIEWERS, Reviews

if TYPE_CHECKING:
    from console.web import Console

VIEWS: dict[str, tuple[str, dict[str, Any]]] = {  # the queue's tabs: (label, filters)
    "open": ("Open", {"level": 1}),
    "mine": ("Mine", {"mine": True}),
    "escalated": ("Escalated", {"level": 2}),
    "overdue": ("Overdue", {"overdue": True}),
    "closed": ("Closed", {"state": "closed"}),
}
DISPOSITION_LABELS = {"no_issue": "No issue", "issue_action_taken": "Issue — action taken",
                      "false_positive": "False positive of a term"}


def month_range(month: str | None) -> tuple[datetime, datetime]:
    """[first instant, first instant of the next month) of a YYYY-MM (default: last month, UTC)."""
    if month:
        try:
            start = datetime.strptime(month[:7], "%Y-%m").replace(tzinfo=UTC)
        except ValueError as e:
            raise InvalidInput("a month is YYYY-MM") from e
    else:
        first = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        start = (first - timedelta(days=1)).replace(day=1)
    return start, (start + timedelta(days=32)).replace(day=1)


def columns(values: list[tuple[str, int]], width: int = 600, height: int = 80) -> list[dict[str, Any]]:
    """Bars of a server-rendered SVG chart: one per (label, value)."""
    top = max([v for _, v in values] + [1])
    step = width / max(len(values), 1)
    return [{"x": round(i * step + 2, 1), "w": round(max(step - 4, 1), 1), "h": round(v / top * (height - 4), 1),
             "y": round(height - v / top * (height - 4), 1), "label": label, "value": v}
            for i, (label, v) in enumerate(values)]


def review_pages(r: APIRouter, console: Console, page: Callable[..., dict[str, Any]],
                 me: Callable[[Request], Principal]) -> None:
    access, prefix = console.access, "/console"
    reviews, archive = Reviews(access), cast(Any, access.archive)  # (the runtime Archive: supervision, review_queue)
    console.env.globals.update(columns=columns, dispositions=DISPOSITION_LABELS, review_views=VIEWS,
                               reviewers=REVIEWERS, examiners=EXAMINERS)

    @r.get("/review", response_class=HTMLResponse, **page(REVIEWERS | EXAMINERS, audited=True))
    def queue(request: Request, view: str = "open", after: str | None = None) -> Response:
        """The review queue: open first-level items, mine, escalated, overdue, or closed, oldest first."""
        if view not in VIEWS:
            raise NotFound("no such view of the queue")
        filters: dict[str, Any] = dict(VIEWS[view][1])
        found = reviews.queue(me(request), after=(after or "")[:26] or None, **filters).result
        return console.render(request, "review_queue.html", found=found, view=view, after=after)

    @r.post("/review/bulk", **page(REVIEWERS, audited=False))
    def bulk(request: Request) -> Response:
        """One action on the ticked items (each checked and sealed on its own)."""
        form, p = request.state.form, me(request)
        ids = [v for k, v in form.items() if k.startswith("item-")][:500]
        action = form.get("action", "")
        if action not in ("claim", "release", "close") or not ids:
            raise InvalidInput("tick items, and claim, release or close them")
        rq: ReviewQueue = archive.review_queue()
        done = rq.bulk(ids, lambda item_id: rq.do(item_id, p, action, form))
        refused = [d for d in done if not d["ok"]]
        view = form.get("view", "open") if form.get("view") in VIEWS else "open"
        if refused:
            return console.render(request, "error.html", status=409, title="Some items were not changed",
                                  detail="; ".join(f"{d['id']}: {d['error']}" for d in refused[:20]))
        return RedirectResponse(f"{prefix}/review?view={view}", status_code=303)

    @r.get("/review/policies", response_class=HTMLResponse, **page(POLICY_READERS, audited=True))
    def policies(request: Request) -> Response:
        """Every policy and its versions; compliance edits them and dry-runs a draft."""
        found = reviews.policies(me(request)).result["policies"]
        return console.render(request, "review_policies.html", policies=found, draft=None, policy_name="", dry=None,
                              month=month_range(None)[0].strftime("%Y-%m"), error=None)

    def draft_of(form: dict[str, str]) -> tuple[str, Any]:
        name = form.get("name", "").strip()[:100]
        try:
            doc = json.loads(form.get("document", ""))
        except ValueError as e:
            raise InvalidInput(f"the policy is not JSON: {e}") from e
        return name, doc

    @r.post("/review/policies", **page(COMPLIANCE, audited=False))
    def store_policy(request: Request) -> Response:
        """A new version of a policy (checked, then sealed with who stored it)."""
        name, doc = draft_of(request.state.form)
        review = archive.supervision()
        made = review.store_policy(name, doc, me(request).actor)
        review.commit_seeds()
        return RedirectResponse(f"{prefix}/review/policies#p-{made.name}-{made.version}", status_code=303)

    @r.post("/review/policies/dry-run", response_class=HTMLResponse, **page(EXAMINERS, audited=True))
    def dry_run(request: Request) -> Response:
        """What the draft would have flagged and sampled in a month (nothing is stored)."""
        form, p = request.state.form, me(request)
        name, doc = draft_of(form)
        start, end = month_range(form.get("month"))
        dry = reviews.dry_run(p, name or "draft", doc, start, end).result
        return console.render(request, "review_policies.html", policies=[], draft=form.get("document", ""),
                              policy_name=name, dry=dry, month=start.strftime("%Y-%m"), error=None)

    @r.get("/review/report", response_class=HTMLResponse, **page(EXAMINERS, audited=True))
    def report(request: Request, month: str | None = None) -> Response:
        """Coverage, reviewer activity and effectiveness for the messages of a month."""
        start, end = month_range(month)
        found = reviews.report(me(request), start, end).result
        bars = columns([(f"{c['policy']} · {c['stream']} · {c['month']}", c["reviewed"]) for c in found["coverage"]])
        return console.render(request, "review_report.html", report=found, month=start.strftime("%Y-%m"),
                              coverage_bars=bars)

    @r.get("/review/{item_id}", response_class=HTMLResponse, **page(REVIEWERS | EXAMINERS, audited=True))
    def item(request: Request, item_id: str) -> Response:
        """One item: why it is here, the message and the thread around it, its trail, the actions."""
        found = reviews.item(me(request), item_id[:26]).result
        return console.render(request, "review_item.html", found=found, it=found["item"],
                              actions=ACTIONS, disposition_names=DISPOSITIONS)

    @r.post("/review/{item_id}/{action}", **page(REVIEWERS, audited=False))
    def action(request: Request, item_id: str, action: str) -> Response:
        """An action on the item; after a close or an escalation, on to the next open item."""
        form, p = request.state.form, me(request)
        if action not in ACTIONS:
            raise NotFound("no such review action")
        rq = archive.review_queue()
        rq.do(item_id[:26], p, action, form)
        following = form.get("next", "")
        if action in ("close", "escalate") and re.fullmatch(r"[0-9A-Z]{26}", following):  # (an item id only)
            return RedirectResponse(f"{prefix}/review/{following}", status_code=303)
        return RedirectResponse(f"{prefix}/review/{item_id[:26]}", status_code=303)


