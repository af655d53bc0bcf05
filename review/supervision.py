"""Supervision: policies, flagging and reproducible sampling of every business message (FINRA 3110,
MiFID II). Queues and dispositions build on the items this module makes.

**Policies** are versioned documents (`review_policies`): which population (tenants, numbers,
directions, origins — app echoes are staff typing on a phone), which lexicons (the defaults by
name, or their own), the sampling rate and the guaranteed minimum per supervised person and month,
the queue. Every version is sealed on the audit stream with who stored it and its SHA-256.

**Flagging** follows the archive's messages (cursor ``review``) like the compliance checks: each
new message is matched against the newest version of every policy whose population holds it; a
template send whose template was APPROVED at send time is not lexicon-matched (its text was reviewed
when it was approved). `retro(policy, start, end)` runs a new or changed policy over past messages.

**Sampling** an examiner can reproduce from public material: a message is sampled iff
``SHA-256(seed ‖ policy@version ‖ stream ‖ natural key)`` read as a fraction of 2^256 is below the
rate, where the month's seed was committed (sealed on the audit stream, its hash published with
the next head) before the month began; `close_month` then tops each supervised person (the
business number) up to the minimum with their lowest-hash messages of the month — again a pure
function of the seed.

An item is (policy, message), once: re-runs and retroactive runs never duplicate it. Each new item
is also a sealed ``review_item`` record on the audit stream (what was flagged or sampled, why, under
which policy version), so the trail of a message starts with the reason it was reviewed.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import rfc8785
import sqlalchemy as sa
from ulid import ULID

from archiver.db import events, metadata
from archiver.errors import InvalidInput, KeyDestroyedError, NotFound
from archiver.keys import KeyRing
from archiver.normalize import AUDIT_KEY, AUDIT_STREAM, append_audit, append_events, system_builder
from archiver.records import canonical_json
from archiver.sqlutil import Row, as_utc, insert_ignore, utcnow
from audit import views
from audit.index import query_fields
from exporters.verify_bundle import message_text, sample_draw  # (standalone: the index uses it too)
from policies.cursors import follow
from policies.templates import TemplateLedger
from review.lexicon import Hit, Lexicon, default_lexicons, lexicons_from, match

Ts = sa.DateTime(timezone=True)
DIRECTIONS, ORIGINS = ("inbound", "outbound"), ("api", "app", "history", "agent")

review_policies = sa.Table(
    "review_policies", metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("document", sa.Text, nullable=False),  # canonical JSON
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("created_at", Ts, nullable=False),
)

review_seeds = sa.Table(
    "review_seeds", metadata,
    sa.Column("policy", sa.String(100), primary_key=True),
    sa.Column("month", sa.String(7), primary_key=True),  # YYYY-MM (UTC)
    sa.Column("seed", sa.String(64), nullable=False),  # hex; its SHA-256 is sealed before the month begins
    sa.Column("committed_at", Ts, nullable=False),
)

review_items = sa.Table(
    "review_items", metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("policy", sa.String(100), nullable=False),
    sa.Column("policy_version", sa.Integer, nullable=False),
    sa.Column("event_id", sa.BigInteger, nullable=False),
    sa.Column("stream", sa.String(128), nullable=False),
    sa.Column("natural_key", sa.String(400), nullable=False),
    sa.Column("tenant", sa.String(64), nullable=True),
    sa.Column("conversation", sa.String(64), nullable=True),
    sa.Column("event_time", Ts, nullable=True),
    sa.Column("reason", sa.String(16), nullable=False),  # flag | sample | minimum
    sa.Column("hits", sa.Text, nullable=False),  # JSON [{lexicon, term}] (the terms, never the text)
    sa.Column("queue", sa.String(100), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # open | closed
    sa.Column("level", sa.Integer, nullable=False, server_default="1"),  # 2 once escalated
    sa.Column("assignee", sa.String(200), nullable=True),  # who holds it (claimed or assigned)
    sa.Column("disposition", sa.String(32), nullable=True),
    sa.Column("closed_by", sa.String(200), nullable=True),
    sa.Column("closed_at", Ts, nullable=True),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("due_at", Ts, nullable=True),  # created_at + the policy's SLA: open past it is overdue
    sa.Column("fp_term", sa.String(1000), nullable=True),  # the term a false-positive disposition named
    sa.UniqueConstraint("policy", "stream", "natural_key", name="uq_review_item"),
    sa.Index("ix_review_items_queue", "queue", "state", "created_at"),
    sa.Index("ix_review_items_record", "stream", "natural_key"),
)


@dataclass(frozen=True)
class Policy:
    name: str
    version: int
    tenants: frozenset[str] | None
    numbers: frozenset[str] | None
    directions: frozenset[str]
    origins: frozenset[str]
    lexicons: tuple[Lexicon, ...]
    sample_rate: float
    sample_minimum: int
    queue: str
    sla_days: int
    document: dict[str, Any]
    created_at: datetime | None = None

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def covers(self, r: Any) -> bool:
        return ((self.tenants is None or r.tenant in self.tenants) and (self.numbers is None or r.stream in self.numbers)
                and r.direction in self.directions and (r.origin or "api") in self.origins)


DEFAULT_POLICY: dict[str, Any] = {
    "description": "Every business message on every number: the default lexicons, 1% sampled, at least 5 "
                   "messages a month per number reviewed.",
    "population": {"tenants": None, "numbers": None, "directions": list(DIRECTIONS), "origins": list(ORIGINS)},
    "lexicons": ["*"], "sample_rate": 0.01, "sample_minimum": 5, "queue": "first-level", "sla_days": 10,
}


def policy_from(name: str, version: int, doc: Any, created_at: datetime | None = None) -> Policy:
    """A policy document checked and compiled (an error names what is wrong)."""
    if not isinstance(doc, dict):
        raise InvalidInput("a policy is a JSON object")
    pop = doc.get("population") or {}
    defaults = {lx.name: lx for lx in default_lexicons()}
    chosen: list[Lexicon] = []
    for entry in doc.get("lexicons") or []:
        if entry == "*":
            chosen += defaults.values()
        elif isinstance(entry, str):
            if entry not in defaults:
                raise InvalidInput(f"no default lexicon {entry!r}; one of {sorted(defaults)}")
            chosen.append(defaults[entry])
        else:
            chosen += lexicons_from({"lexicons": [entry]})
    rate, minimum = doc.get("sample_rate", 0), doc.get("sample_minimum", 0)
    if not isinstance(rate, int | float) or not 0 <= rate <= 1:
        raise InvalidInput("sample_rate is a fraction between 0 and 1")
    if not isinstance(minimum, int) or minimum < 0:
        raise InvalidInput("sample_minimum is a whole number of messages per person and month")
    directions = frozenset(pop.get("directions") or DIRECTIONS)
    origins = frozenset(pop.get("origins") or ORIGINS)
    if directions - set(DIRECTIONS) or origins - set(ORIGINS):
        raise InvalidInput(f"directions are {DIRECTIONS}, origins {ORIGINS}")
    if not chosen and not rate and not minimum:
        raise InvalidInput("a policy flags (lexicons), samples, or both")
    sla = doc.get("sla_days", 10)
    if not isinstance(sla, int) or isinstance(sla, bool) or not 1 <= sla <= 366:
        raise InvalidInput("sla_days is the whole number of days (1-366) an item may stay open before it is overdue")
    for key in ("tenants", "numbers"):
        if pop.get(key) is not None and (not isinstance(pop[key], list) or not all(isinstance(v, str) for v in pop[key])):
            raise InvalidInput(f"population.{key} is a list of ids, or null for all")
    return Policy(name, version, frozenset(pop["tenants"]) if pop.get("tenants") else None,
                  frozenset(pop["numbers"]) if pop.get("numbers") else None, directions, origins, tuple(chosen),
                  float(rate), minimum, str(doc.get("queue") or "first-level")[:100], sla, doc, as_utc(created_at))


def sample_value(seed: str, policy: str, stream: str, natural_key: str) -> float:
    """The message's draw in [0, 1): SHA-256(seed ‖ policy@version ‖ stream ‖ natural key) / 2^256 —
    the standalone verifier's own function, so the archive and an examiner cannot disagree."""
    return sample_draw(seed, policy, stream, natural_key)


def month_of(t: datetime) -> str:
    u = as_utc(t)  # (SQLite hands back naive UTC)
    assert u is not None
    return u.strftime("%Y-%m")


class Supervision:
    def __init__(self, engine: sa.Engine, keyring: KeyRing, templates: TemplateLedger) -> None:
        self.engine, self.keyring, self.templates = engine, keyring, templates
        self._seeds: dict[tuple[str, str], str] = {}  # (a committed seed never changes)

    # -- policies -------------------------------------------------------------------------------

    def store_policy(self, name: str, doc: dict[str, Any], actor: str, now: datetime | None = None) -> Policy:
        """A new version of policy `name` (checked first); sealed on the audit stream."""
        if not name or len(name) > 100 or not name.replace("-", "").replace("_", "").isalnum():
            raise InvalidInput("a policy name is letters, digits, - and _")
        now = now or utcnow()
        try:
            body = canonical_json(doc)
        except rfc8785.CanonicalizationError as e:  # (an integer past 2^53, a NaN: not sealable JSON)
            raise InvalidInput(f"the policy document is not sealable JSON: {e}") from e
        with self.engine.begin() as conn:
            version = (conn.execute(sa.select(sa.func.max(review_policies.c.version)).where(
                review_policies.c.name == name)).scalar() or 0) + 1
            policy = policy_from(name, version, json.loads(body))
            conn.execute(review_policies.insert().values(name=name, version=version, document=body.decode(),
                                                         sha256=hashlib.sha256(body).hexdigest(), created_by=actor,
                                                         created_at=now))
        append_audit(self.engine, self.keyring, "audit", "review.policy", actor,
                     {"policy": name, "version": version, "sha256": hashlib.sha256(body).hexdigest(),
                      "document": json.loads(body)}, now)
        return policy

    def ensure_default(self) -> None:
        with self.engine.connect() as conn:
            any_policy = conn.execute(sa.select(review_policies.c.name).limit(1)).first()
        if any_policy is None:
            self.store_policy("default", DEFAULT_POLICY, "system:review")

    def policies(self) -> list[Policy]:
        """The newest version of every policy."""
        newest = sa.select(review_policies.c.name, sa.func.max(review_policies.c.version).label("v")).group_by(
            review_policies.c.name).subquery()
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(review_policies).join(newest, sa.and_(
                review_policies.c.name == newest.c.name, review_policies.c.version == newest.c.v))
                .order_by(review_policies.c.name)).all()
        return [policy_from(r.name, r.version, json.loads(r.document), r.created_at) for r in rows]

    def versions(self, name: str | None = None) -> dict[str, list[Policy]]:
        """Every version of every policy (or of `name`), oldest first."""
        q = sa.select(review_policies).order_by(review_policies.c.name, review_policies.c.version)
        if name is not None:
            q = q.where(review_policies.c.name == name)
        out: dict[str, list[Policy]] = {}
        with self.engine.connect() as conn:
            for r in conn.execute(q):
                out.setdefault(r.name, []).append(policy_from(r.name, r.version, json.loads(r.document),
                                                              r.created_at))
        return out

    def history(self) -> list[dict[str, Any]]:
        """Every stored version: its document, hash, who stored it and when (newest first)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(review_policies).order_by(review_policies.c.name,
                                                                    review_policies.c.version.desc())).all()
        return [{"name": r.name, "version": r.version, "sha256": r.sha256, "created_by": r.created_by,
                 "created_at": as_utc(r.created_at), "document": json.loads(r.document)} for r in rows]

    def policy(self, name: str) -> Policy:
        found = [p for p in self.policies() if p.name == name]
        if not found:
            raise NotFound(f"no review policy {name!r}")
        return found[0]

    # -- seeds ----------------------------------------------------------------------------------

    def commit_seeds(self, now: datetime | None = None) -> int:
        """Commit this month's and next month's seed of every policy that lacks one (the worker calls
        this daily, so a month's seed is sealed well before the month begins). Returns how many."""
        now = now or utcnow()
        first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        months = [month_of(first), month_of(first + timedelta(days=32))]
        made = 0
        for p in self.policies():
            for m in months:
                made += self._commit(p.name, m, now)
        return made

    def _commit(self, policy: str, month: str, now: datetime) -> int:
        seed = secrets.token_hex(32)
        with self.engine.begin() as conn:
            insert_ignore(conn, review_seeds, [{"policy": policy, "month": month, "seed": seed, "committed_at": now}])
            kept = conn.execute(sa.select(review_seeds.c.seed).where(review_seeds.c.policy == policy,
                                                                     review_seeds.c.month == month)).scalar()
        if kept != seed:  # (there was one already, or another process committed it first)
            return 0
        start = datetime.strptime(month + "-01", "%Y-%m-%d").replace(tzinfo=UTC)
        append_audit(self.engine, self.keyring, "audit", "review.seed", "system:review",
                     {"policy": policy, "month": month, "seed_sha256": hashlib.sha256(seed.encode()).hexdigest(),
                      "committed_before_month": now < start}, now)
        return 1

    def committed_seed(self, policy: str, month: str) -> str | None:
        """The month's seed if one was committed (never commits one: a dry run must not)."""
        with self.engine.connect() as conn:
            seed = conn.execute(sa.select(review_seeds.c.seed).where(review_seeds.c.policy == policy,
                                                                     review_seeds.c.month == month)).scalar()
        return str(seed) if seed is not None else None

    def seed(self, policy: str, month: str, now: datetime | None = None) -> str:
        """The month's seed, committing it now if the worker had not (a retroactive run over a month
        before supervision began): that commitment says it came after the month began."""
        if (policy, month) in self._seeds:
            return self._seeds[(policy, month)]
        seed = self.committed_seed(policy, month)
        if seed is None:
            self._commit(policy, month, now or utcnow())
            return self.seed(policy, month, now)
        self._seeds[(policy, month)] = seed
        return seed

    # -- flagging and sampling ------------------------------------------------------------------

    def run(self, batch: int = 2000, max_batches: int | None = None) -> int:
        """Flag and sample the messages captured since the last run, each under the version of every
        policy that was in force when it was sent (`in_force`). Returns items made."""
        versions = self.versions()
        if not versions:
            return 0
        gathered: list[dict[str, Any]] = []

        def consider(r: Row) -> int:
            gathered.extend(self._candidates(r, [in_force(v, r.event_time or r.received_at)
                                                 for v in versions.values()]))
            return 0

        def store() -> int:  # one transaction per batch (a replayed batch adds nothing: `_store`)
            made = self._store(gathered)
            gathered.clear()
            return made

        return follow(self.engine, "review", events.c.kind == "message", consider, batch, max_batches, store)

    def retro(self, name: str, start: datetime, end: datetime, batch: int = 2000) -> int:
        """Run policy `name` (its newest version) over messages sent in [start, end). Items that
        exist already stay as they are: a re-run adds nothing."""
        policy, after, made = self.policy(name), 0, 0
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(sa.select(events).where(
                    events.c.kind == "message", events.c.event_time >= start, events.c.event_time < end,
                    events.c.id > after).order_by(events.c.id).limit(batch)).all()
            if not rows:
                return made
            made += self._store([i for r in rows for i in self._candidates(r, [policy])])
            after = rows[-1].id

    def _candidates(self, r: Row, policies: list[Policy]) -> list[dict[str, Any]]:
        """The items message `r` makes under `policies` (flagged, drawn, or both), not yet stored."""
        covering = [p for p in policies if p.covers(r)]
        if not covering:
            return []
        try:
            view = views.record_view(self.keyring, r)
        except KeyDestroyedError:
            return []
        content = view["content"]
        if not isinstance(content, dict) or content.get("erased") or content.get("disposed"):
            return []
        text = message_text(content)
        fields = query_fields({**view, "has_attachment": False})
        approved = self._approved_template(r)
        made = []
        for p in covering:
            hits: list[Hit] = [] if approved else match(p.lexicons, text, fields)
            drawn = sample_value(self.seed(p.name, month_of(r.event_time or r.received_at)), p.label, r.stream,
                                 r.natural_key) < p.sample_rate
            if hits or drawn:
                made.append(self._item(p, r, "flag" if hits else "sample", hits))
        return made

    def _approved_template(self, r: Row) -> bool:
        if r.type != "template" or not r.template_name or not r.tenant:
            return False
        state = self.templates.state(r.tenant, r.template_name, r.template_language or "", as_utc(r.event_time))
        return state.status == "APPROVED"

    @staticmethod
    def _item(p: Policy, r: Row, reason: str, hits: list[Hit]) -> dict[str, Any]:
        now = utcnow()
        return {"id": str(ULID()), "policy": p.name, "policy_version": p.version, "event_id": r.id,
                "stream": r.stream, "natural_key": r.natural_key, "tenant": r.tenant, "conversation": r.conversation,
                "event_time": as_utc(r.event_time), "reason": reason, "queue": p.queue, "state": "open", "level": 1,
                "hits": json.dumps([{"lexicon": h.lexicon, "term": h.term} for h in hits]), "created_at": now,
                "due_at": now + timedelta(days=p.sla_days)}

    def _store(self, items: list[dict[str, Any]]) -> int:
        if not items:
            return 0
        with self.engine.begin() as conn:
            existing = {(i.policy, i.stream, i.natural_key) for i in conn.execute(
                sa.select(review_items.c.policy, review_items.c.stream, review_items.c.natural_key).where(
                    review_items.c.event_id.in_({i["event_id"] for i in items})))}
            new = [i for i in items if (i["policy"], i["stream"], i["natural_key"]) not in existing]
            if not new:
                return 0
            insert_ignore(conn, review_items, new)
            b = system_builder(self.keyring)
            for i in new:
                b.add(AUDIT_STREAM, f"review_item:{i['policy']}:{i['stream']}:{i['natural_key']}", "review_item",
                      canonical_json({k: v for k, v in i.items() if k not in ("created_at", "event_time", "due_at")}
                                     | {"hits": json.loads(i["hits"]), "event_time": _iso(i["event_time"])}),
                      [AUDIT_KEY], type=i["reason"], event_time=b.received_at)
            append_events(conn, b)
        return len(new)

    def close_month(self, name: str, month: str) -> int:
        """Top every supervised person (number) of the month up to the policy's minimum with their
        messages of lowest draw not yet items. Returns items added."""
        p = self.policy(name)
        if not p.sample_minimum:
            return 0
        start = datetime.strptime(month + "-01", "%Y-%m-%d").replace(tzinfo=UTC)
        end = (start + timedelta(days=32)).replace(day=1)
        seed = self.seed(p.name, month)
        with self.engine.connect() as conn:
            rows = [r for r in conn.execute(sa.select(events).where(
                events.c.kind == "message", events.c.event_time >= start, events.c.event_time < end))
                if p.covers(r)]
            have: dict[str, int] = dict(conn.execute(sa.select(review_items.c.stream, sa.func.count()).where(
                review_items.c.policy == p.name, review_items.c.event_time >= start,
                review_items.c.event_time < end).group_by(review_items.c.stream)).all())
            taken = {(i.stream, i.natural_key) for i in conn.execute(sa.select(
                review_items.c.stream, review_items.c.natural_key).where(review_items.c.policy == p.name))}
        by_person: dict[str, list[Row]] = {}
        for r in rows:
            by_person.setdefault(r.stream, []).append(r)
        made = []
        for person, msgs in sorted(by_person.items()):
            short = p.sample_minimum - have.get(person, 0)
            pool = sorted((r for r in msgs if (r.stream, r.natural_key) not in taken),
                          key=lambda r: sample_value(seed, p.label, r.stream, r.natural_key))
            made += [self._item(p, r, "minimum", []) for r in pool[:max(short, 0)]]
        return self._store(made)

    def items(self, policy: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(review_items).order_by(review_items.c.event_id, review_items.c.policy)
        if policy:
            q = q.where(review_items.c.policy == policy)
        with self.engine.connect() as conn:
            return [{**r._mapping, "hits": json.loads(r.hits)} for r in conn.execute(q)]


def in_force(versions: list[Policy], sent_at: datetime | None) -> Policy:
    """The version of a policy that governs a message sent at `sent_at` (its sealed event time): the
    newest stored at or before it; the first version for a message older than the policy (the
    follower's cursor starts at the archive's first message, so those are considered too). An
    examiner applies the same rule to a bundle (`exporters.verify_bundle`)."""
    at = as_utc(sent_at)
    chosen = versions[0]
    for v in versions[1:]:
        if at is not None and v.created_at is not None and v.created_at <= at:
            chosen = v
    return chosen


def _iso(t: datetime | date | None) -> str | None:
    return t.isoformat() if t else None
