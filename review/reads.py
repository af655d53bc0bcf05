"""Audited reads of supervision: the queue, an item with the thread around its hit, the
review trail of any message, the policies, a policy's dry run, and the reports an examiner asks
for (coverage, reviewer activity, effectiveness). Each is one access event, as every read in
`audit.access` is, and tenant-scoped principals see only their tenants' items.

Who: reviewers and compliance officers work the queues (`REVIEWERS`); compliance and the
regulator read the reports and trails (`EXAMINERS`); a policy is changed by compliance only.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from archiver.db import events
from archiver.errors import InvalidInput, KeyDestroyedError, NotFound
from archiver.sqlutil import as_utc
from audit import views
from audit.access import Access, Answer
from audit.auth import Principal
from audit.index import query_fields
from exporters.verify_bundle import message_text
from review.lexicon import match
from review.queue import review_actions, review_staff
from review.supervision import Policy, Supervision, month_of, policy_from, review_items, sample_value

REVIEWERS = frozenset({"reviewer", "compliance"})
EXAMINERS = frozenset({"compliance", "regulator"})
POLICY_READERS = REVIEWERS | {"regulator"}
CONTEXT = 8  # messages either side of the hit on an item's page
DRY_RUN_CAP = 200_000  # messages a dry run reads at most


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def item_view(r: Any, now: datetime, own: bool = False) -> dict[str, Any]:
    """A review item as its queue shows it (terms, never message text)."""
    due = as_utc(r.due_at)
    return {"id": r.id, "policy": r.policy, "policy_version": r.policy_version, "reason": r.reason,
            "hits": json.loads(r.hits), "queue": r.queue, "level": r.level, "state": r.state,
            "assignee": r.assignee, "disposition": r.disposition, "closed_by": r.closed_by,
            "closed_at": as_utc(r.closed_at), "stream": r.stream, "natural_key": r.natural_key, "tenant": r.tenant,
            "conversation": r.conversation, "event_time": as_utc(r.event_time), "created_at": as_utc(r.created_at),
            "due_at": due, "overdue": r.state == "open" and due is not None and due < now,
            "age_days": (now - as_utc(r.created_at)).days, "own": own}


class Reviews:
    """The supervision reads over one archive, through its access layer."""

    def __init__(self, access: Access) -> None:
        self.access, self.engine = access, access.engine
        self.supervision = Supervision(access.engine, access.keyring, access.archive.templates())

    def _scoped(self, p: Principal, q: Any) -> Any:
        return q if p.tenants is None else q.where(review_items.c.tenant.in_(sorted(p.tenants)))

    def _own_streams(self, p: Principal) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(review_staff.c.stream).where(review_staff.c.person == p.name)).scalars())

    # -- the queue ------------------------------------------------------------------------------

    def queue(self, p: Principal, queue: str | None = None, state: str = "open", level: int | None = None,
              mine: bool = False, policy: str | None = None, reason: str | None = None, overdue: bool = False,
              limit: int = 50, after: str | None = None, now: datetime | None = None) -> Answer:
        """Items, oldest first (a keyset page after item id `after`), with the exact total."""
        self.access.allow(p, REVIEWERS | EXAMINERS)
        now = now or datetime.now(UTC)
        q = self._scoped(p, sa.select(review_items))
        if state != "all":
            q = q.where(review_items.c.state == state)
        for column, value in ((review_items.c.queue, queue), (review_items.c.level, level),
                              (review_items.c.policy, policy), (review_items.c.reason, reason)):
            if value is not None:
                q = q.where(column == value)
        if mine:
            q = q.where(review_items.c.assignee == p.name)
        if overdue:
            q = q.where(review_items.c.state == "open", review_items.c.due_at < now)
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(q.subquery())).scalar() or 0
            page = q.where(review_items.c.id > after) if after else q
            rows = conn.execute(page.order_by(review_items.c.id).limit(limit + 1)).all()
        own = self._own_streams(p)
        items = [item_view(r, now, r.stream in own) for r in rows[:limit]]
        result = {"total": total, "items": items, "next_after": items[-1]["id"] if len(rows) > limit else None}
        return self.access.answer(p, "review.queue", {"queue": queue, "state": state, "level": level, "mine": mine,
                                                      "policy": policy, "reason": reason, "overdue": overdue,
                                                      "after": after}, result, total, [i["id"] for i in items])

    # -- one item -------------------------------------------------------------------------------

    def item(self, p: Principal, item_id: str, now: datetime | None = None) -> Answer:
        """An item with its message, the thread around it, the reasons of its hits, its trail, and
        the previous and next open item of its queue (for the reviewer's next/prev)."""
        self.access.allow(p, REVIEWERS | EXAMINERS)
        now = now or datetime.now(UTC)
        with self.engine.connect() as conn:
            r = conn.execute(self._scoped(p, sa.select(review_items)).where(review_items.c.id == item_id[:26])).first()
            if r is None:
                raise NotFound("no such review item")
            msg = conn.execute(sa.select(events).where(events.c.id == r.event_id)).first()
            around = self._scoped(p, sa.select(review_items.c.id).where(
                review_items.c.queue == r.queue, review_items.c.state == "open", review_items.c.level == r.level))
            prev_id = conn.execute(around.where(review_items.c.id < r.id).order_by(review_items.c.id.desc())
                                   .limit(1)).scalar()
            next_id = conn.execute(around.where(review_items.c.id > r.id).order_by(review_items.c.id).limit(1)).scalar()
            rows: list[Any] = []
            gaps: list[Any] = []
            if msg is not None and msg.conversation:
                t = as_utc(msg.event_time) or now
                rows, gaps = views.thread_rows(conn, msg.conversation, p.sees, None, t - timedelta(days=3),
                                               t + timedelta(days=3))
        if msg is None or not p.sees(msg.tenant):
            raise NotFound("no such review item")
        items = views.thread_items(self.access.keyring, rows, gaps) if rows else []
        at = next((i for i, it in enumerate(items) if it["row"] == msg.id), None)
        context = items[max(0, at - CONTEXT): at + CONTEXT + 1] if at is not None else []
        message = views.record_view(self.access.keyring, msg)
        reasons = self._reasons(r.policy, r.policy_version)
        hits = [{**h, **reasons.get((h["lexicon"], h["term"]), {"reason": "", "rule": ""})} for h in json.loads(r.hits)]
        result = {"item": {**item_view(r, now, r.stream in self._own_streams(p)), "hits": hits},
                  "message": message, "context": context, "trail": self._trail(r.id),
                  "prev": prev_id, "next": next_id}
        ids = [message["id"] or message["natural_key"]] + [c["record"]["id"] or c["record"]["natural_key"]
                                                           for c in context if c["row"] != msg.id]
        return self.access.answer(p, "review.item", {"item": r.id}, result, 1, ids)

    def _reasons(self, policy: str, version: int) -> dict[tuple[str, str], dict[str, str]]:
        """Per (lexicon, term) of the policy version: the term's reason and its lexicon's (the rule)."""
        from review.supervision import review_policies

        with self.engine.connect() as conn:
            doc = conn.execute(sa.select(review_policies.c.document).where(
                review_policies.c.name == policy, review_policies.c.version == version)).scalar()
        if doc is None:
            return {}
        compiled = policy_from(policy, version, json.loads(doc))
        return {(lx.name, t.query): {"reason": t.reason, "rule": lx.reason} for lx in compiled.lexicons
                for t in lx.terms}

    def _trail(self, item_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(review_actions).where(review_actions.c.item_id == item_id)
                                .order_by(review_actions.c.at, review_actions.c.id)).all()
        return [{"action": a.action, "actor": a.actor, "at": as_utc(a.at), **json.loads(a.details)} for a in rows]

    def record_trail(self, p: Principal, stream: str, seq: int, now: datetime | None = None) -> Answer:
        """The review trail of one message: every item made of it (why, under which policy
        version) and every action on each, oldest first."""
        self.access.allow(p, REVIEWERS | EXAMINERS)
        now = now or datetime.now(UTC)
        with self.engine.connect() as conn:
            msg = conn.execute(sa.select(events).where(events.c.stream == stream, events.c.seq == seq)).first()
            if msg is None or not p.sees(msg.tenant) or not self.access.visible_stream(p, stream):
                raise NotFound("no such record")
            rows = conn.execute(sa.select(review_items).where(review_items.c.stream == stream,
                                                              review_items.c.natural_key == msg.natural_key)
                                .order_by(review_items.c.id)).all()
        found = [{**item_view(r, now), "trail": self._trail(r.id)} for r in rows]
        return self.access.answer(p, "review.trail", {"stream": stream, "seq": seq},
                                  {"record": f"{stream}/{seq}", "items": found}, len(found), [f"{stream}/{seq}"])

    # -- policies -------------------------------------------------------------------------------

    def policies(self, p: Principal) -> Answer:
        """Every version of every policy: document, SHA-256, who stored it, when (newest first)."""
        self.access.allow(p, POLICY_READERS)
        found = self.supervision.history()
        return self.access.answer(p, "review.policies", {}, {"policies": found}, len(found),
                                  [f"{v['name']}@{v['version']}" for v in found])

    def dry_run(self, p: Principal, name: str, doc: Any, start: datetime, end: datetime) -> Answer:
        """What policy document `doc` would have flagged and sampled among messages sent in
        [start, end) that the principal may see: counts per lexicon and term, and the records it
        would have flagged (ids, no text). Nothing is stored."""
        self.access.allow(p, EXAMINERS)
        policy = policy_from(name or "dry-run", 0, doc)
        if end <= start:
            raise InvalidInput("the dry run's range ends after it starts")
        review = self.supervision
        seen = covered = 0
        by_term: Counter[tuple[str, str]] = Counter()
        flagged: list[str] = []
        drawn = n_flagged = 0
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(events).where(events.c.kind == "message", events.c.event_time >= start,
                                                        events.c.event_time < end).order_by(events.c.id)
                                .limit(DRY_RUN_CAP + 1)).all()
        if len(rows) > DRY_RUN_CAP:
            raise InvalidInput(f"the range holds more than {DRY_RUN_CAP} messages: dry-run a shorter one")
        seeds: dict[str, str | None] = {}
        for r in rows:
            if not p.sees(r.tenant) or not policy.covers(r):
                continue
            seen += 1
            try:
                view = views.record_view(self.access.keyring, r)
            except KeyDestroyedError:
                continue
            content = view["content"]
            if not isinstance(content, dict) or content.get("erased") or content.get("disposed"):
                continue
            covered += 1
            hits = match(policy.lexicons, message_text(content), query_fields({**view, "has_attachment": False}))
            for h in hits:
                by_term[(h.lexicon, h.term)] += 1
            n_flagged += bool(hits)
            if hits and len(flagged) < 1000:
                flagged.append(view["id"] or r.natural_key)
            month = month_of(r.event_time or r.received_at)
            if month not in seeds:
                seeds[month] = review.committed_seed(name, month)
            seed = seeds[month]
            if seed is not None and sample_value(seed, policy.label, r.stream, r.natural_key) < policy.sample_rate:
                drawn += 1
        terms = [{"lexicon": lx, "term": t, "hits": n} for (lx, t), n in by_term.most_common()]
        result = {"policy": name, "from": start, "to": end, "messages": seen, "readable": covered,
                  "flagged": n_flagged, "flagged_records": flagged, "terms": terms,
                  "sampled": drawn if all(s is not None for s in seeds.values()) else None,
                  "sampling_expected": round(covered * policy.sample_rate, 1)}
        return self.access.answer(p, "review.dry_run", {"policy": name, "from": start.isoformat(),
                                                        "to": end.isoformat()}, result, n_flagged, flagged)

    # -- reports --------------------------------------------------------------------------------

    def report(self, p: Principal, start: datetime, end: datetime, now: datetime | None = None) -> Answer:
        """Coverage per policy, number and month; reviewer activity; hit and false-positive rates per
        policy and term (the effectiveness review, FINRA Notice 07-59), for the messages sent in
        [start, end): their items, and every action on those items whenever it was taken."""
        self.access.allow(p, EXAMINERS)
        now = now or datetime.now(UTC)
        review = self.supervision
        month = sa.func.substr(sa.cast(events.c.event_time, sa.String), 1, 7)
        with self.engine.connect() as conn:
            items = conn.execute(self._scoped(p, sa.select(review_items)).where(
                review_items.c.event_time >= start, review_items.c.event_time < end)).all()
            coverage_rows: list[Any] = []
            for pol in review.policies():
                coverage_rows += [(pol.name, *row) for row in conn.execute(
                    _population(pol, sa.select(events.c.stream, month.label("m"), sa.func.count()).where(
                        events.c.kind == "message", events.c.event_time >= start, events.c.event_time < end))
                    .group_by(events.c.stream, month))
                    if self.access.visible_stream(p, row[0])]
            actions = conn.execute(sa.select(review_actions, review_items.c.tenant, review_items.c.created_at
                                             .label("item_created")).join(
                review_items, review_items.c.id == review_actions.c.item_id).where(
                review_items.c.event_time >= start, review_items.c.event_time < end)).all()
        messages = {(pol_name, stream, m): int(n) for pol_name, stream, m, n in coverage_rows}
        people: dict[str, dict[str, Any]] = defaultdict(lambda: {"actions": Counter(), "dispositions": Counter(),
                                                                 "hours_to_close": []})
        for a in actions:
            if p.tenants is not None and a.tenant not in p.tenants:
                continue
            who = people[a.actor]
            who["actions"][a.action] += 1
            if a.action == "close":
                who["dispositions"][json.loads(a.details).get("disposition")] += 1
                who["hours_to_close"].append((as_utc(a.at) - as_utc(a.item_created)).total_seconds() / 3600)
        reviewers = [{"actor": actor, "actions": dict(v["actions"]), "dispositions": dict(v["dispositions"]),
                      "closed": sum(v["dispositions"].values()),
                      "median_hours_to_close": round(statistics.median(v["hours_to_close"]), 2)
                      if v["hours_to_close"] else None} for actor, v in sorted(people.items())]
        result = {"from": start, "to": end, "at": now,
                  "coverage": item_coverage(items, now, messages), "reviewers": reviewers, "effectiveness": effectiveness(items)}
        return self.access.answer(p, "review.report", {"from": start.isoformat(), "to": end.isoformat()}, result,
                                  len(items), [])


def review_report(items: Sequence[Any], now: datetime | None = None) -> dict[str, Any]:
    """Coverage per policy, number and month, and effectiveness, of these items alone (what a
    bundle holds: its messages' items; each is in review/evidence.jsonl, proven)."""
    now = now or datetime.now(UTC)
    return {"at": now.isoformat(), "coverage": item_coverage(items, now), "effectiveness": effectiveness(items),
            "note": "of the items of this production's messages; GET /api/v1/review/report gives the whole archive's"}


COVERAGE = ("flagged", "sampled", "reviewed", "open", "overdue")


def item_coverage(items: Sequence[Any], now: datetime,
                  messages: dict[tuple[str, str, str], int] | None = None) -> list[dict[str, Any]]:
    """Per (policy, number, month): the items flagged, sampled, reviewed, open and overdue, and (with
    `messages`, the population's message counts) how many messages there were."""
    # (a month with messages and no items is a row too)
    counts: dict[tuple[str, str, str], Counter[str]] = defaultdict(Counter, {k: Counter() for k in messages or {}})
    for r in items:
        c = counts[(r.policy, r.stream, month_of(r.event_time))]
        c["flagged" if r.reason == "flag" else "sampled"] += 1
        c["reviewed" if r.state == "closed" else "open"] += 1
        c["overdue"] += int(r.state == "open" and r.due_at is not None and as_utc(r.due_at) < now)
    return [{"policy": k[0], "stream": k[1], "month": k[2],
             **({"messages": messages.get(k, 0)} if messages is not None else {}), **{n: c[n] for n in COVERAGE}}
            for k, c in sorted(counts.items())]


def effectiveness(items: Sequence[Any]) -> list[dict[str, Any]]:
    """Per policy and per term: items, closed, issues, false positives and the false-positive rate
    among closed items (a term reviewers keep calling wrong is a term to rewrite)."""
    per_policy: dict[str, dict[str, Any]] = {}
    for r in items:
        pol = per_policy.setdefault(r.policy, {"policy": r.policy, "items": 0, "flagged": 0, "sampled": 0,
                                               "closed": 0, "issues": 0, "false_positives": 0, "terms": {}})
        pol["items"] += 1
        pol["flagged" if r.reason == "flag" else "sampled"] += 1
        closed = r.state == "closed"
        pol["closed"] += int(closed)
        pol["issues"] += int(r.disposition == "issue_action_taken")
        pol["false_positives"] += int(r.disposition == "false_positive")
        fp_term = r.fp_term if r.disposition == "false_positive" else None
        for h in json.loads(r.hits):
            t = pol["terms"].setdefault((h["lexicon"], h["term"]), {"lexicon": h["lexicon"], "term": h["term"],
                                                                   "hits": 0, "closed": 0, "issues": 0,
                                                                   "false_positives": 0})
            t["hits"] += 1
            t["closed"] += int(closed)
            t["issues"] += int(r.disposition == "issue_action_taken")
            t["false_positives"] += int(fp_term == h["term"])
    out = []
    for pol in per_policy.values():
        terms = sorted(pol.pop("terms").values(), key=lambda t: (-t["hits"], t["term"]))
        for t in terms:
            t["false_positive_rate"] = round(t["false_positives"] / t["closed"], 3) if t["closed"] else None
        flagged_closed = sum(t["closed"] for t in terms)
        pol["false_positive_rate"] = round(pol["false_positives"] / flagged_closed, 3) if flagged_closed else None
        out.append({**pol, "terms": terms})
    return sorted(out, key=lambda x: x["policy"])


def _population(p: Policy, q: Any) -> Any:
    """`q` (over events) narrowed to the policy's population."""
    q = q.where(events.c.direction.in_(sorted(p.directions)),
                sa.func.coalesce(events.c.origin, "api").in_(sorted(p.origins)))
    if p.tenants is not None:
        q = q.where(events.c.tenant.in_(sorted(p.tenants)))
    if p.numbers is not None:
        q = q.where(events.c.stream.in_(sorted(p.numbers)))
    return q
