"""Conversation windows and compliance checks on every outbound message (R-39, R-41, R-42).

**Windows.** The 24-hour customer-service window is per contact and per *channel*: an inbound
message captured through the Cloud API (origin ``api``, or ``agent`` while Meta's AI agent holds
the chat) opens the API window for 24 hours; the Business App keeps its own state and is not
bound by the API's rule, and app echoes never open or extend the API window. The pricing
category Meta billed comes from the message's statuses.

**Checks.** For each outbound message (API sends from the send log, app echoes):

- ``template_not_approved`` — a template send whose template was not APPROVED at send time;
- ``marketing_without_opt_in`` — a marketing template to a contact with no opt-in on record;
- ``opted_out_contact`` — any message in a category the contact had opted out of at send time
  (a template's category; free-form text counts as ``service``);
- ``outside_service_window`` — free-form API text while the API window was closed.

Each violation is a sealed ``violation`` record on the number's stream (under the contact's key:
the evidence names them) with the evidence that decided it: the template ledger entry, the
consent entry, the window. Natural keys make re-checking idempotent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from archiver.db import events
from archiver.errors import KeyDestroyedError
from archiver.identity import subject_key_id
from archiver.keys import KeyRing
from archiver.kinds import key_part
from archiver.normalize import append_events, system_builder
from archiver.records import canonical_json
from archiver.sqlutil import Row, as_utc, utcnow
from policies.consent import ConsentLedger
from policies.cursors import read_cursor, write_cursor
from policies.templates import TemplateLedger

WINDOW = timedelta(hours=24)
VIOLATIONS = ("template_not_approved", "marketing_without_opt_in", "opted_out_contact", "outside_service_window")


@dataclass(frozen=True)
class WindowState:
    channel: str
    open: bool
    opened_by: str | None  # wamid of the inbound message that opened it
    expires_at: datetime | None
    restricted: bool  # whether the channel enforces the window at all


class Windows:
    def __init__(self, engine: sa.Engine, keyring: KeyRing) -> None:
        self.engine = engine
        self.keyring = keyring

    def state(self, stream: str, subject: str, channel: str, at: datetime) -> WindowState:
        if channel != "api":
            return WindowState(channel, True, None, None, restricted=False)
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(events.c.wamid, events.c.event_time).where(
                events.c.stream == stream, events.c.conversation == subject, events.c.kind == "message",
                events.c.direction == "inbound", events.c.origin.in_(["api", "agent"]),
                events.c.event_time <= at, events.c.event_time > at - WINDOW)
                .order_by(events.c.event_time.desc()).limit(1)).first()
        if row is None:
            return WindowState(channel, False, None, None, restricted=True)
        opened = as_utc(row.event_time)
        return WindowState(channel, True, row.wamid, opened + WINDOW if opened else None, restricted=True)

    def pricing(self, stream: str, wamid: str) -> dict[str, Any] | None:
        """The pricing block Meta sent with the message's statuses (category, model, billable)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(events).where(events.c.stream == stream, events.c.kind == "status",
                                                        events.c.wamid == wamid).order_by(events.c.event_time)).all()
        for r in rows:
            try:
                st = json.loads(self.keyring.open_record(r)).get("status", {})
            except KeyDestroyedError:
                continue
            if isinstance(pricing := st.get("pricing"), dict):
                return pricing
        return None


def _category(value: Any) -> str | None:
    return str(value).lower() if value else None


class ComplianceChecks:
    def __init__(self, engine: sa.Engine, keyring: KeyRing, consent: ConsentLedger, templates: TemplateLedger) -> None:
        self.engine = engine
        self.keyring = keyring
        self.consent = consent
        self.templates = templates
        self.windows = Windows(engine, keyring)

    def run(self, recheck: timedelta | None = None, now: datetime | None = None,
            ledger_batches: int | None = None) -> int:
        """Sync the ledgers (at most `ledger_batches` each, for a bounded worker round), then check
        outbound messages not yet checked (and, with `recheck`, every one sent within that period
        again: late webhooks can change a verdict). Returns violations added."""
        now = now or utcnow()
        self.consent.sync(max_batches=ledger_batches)
        self.templates.sync(max_batches=ledger_batches)
        outbound = sa.and_(events.c.kind == "message", events.c.direction == "outbound",
                           events.c.origin.in_(["api", "app"]))
        with self.engine.connect() as conn:
            last = read_cursor(conn, "checks")
            cond = events.c.id > last
            if recheck is not None:
                cond = sa.or_(cond, events.c.event_time >= now - recheck)
            rows = conn.execute(sa.select(events).where(outbound, cond).order_by(events.c.id)).all()
        added = 0
        for r in rows:
            added += self._check(r)
        if rows:
            with self.engine.begin() as conn:
                write_cursor(conn, "checks", max(last, max(r.id for r in rows)))
        return added

    def _check(self, m: Row) -> int:
        at = as_utc(m.event_time) or as_utc(m.received_at)
        assert at is not None
        if m.conversation is None:
            return 0
        found: list[tuple[str, dict[str, Any]]] = []
        category = "service"
        if m.type == "template":
            tenant = m.tenant or ""
            t = self.templates.state(tenant, m.template_name or "", m.template_language or "", at)
            pricing = self.windows.pricing(m.stream, m.wamid) if m.wamid else None
            category = _category(t.category) or _category((pricing or {}).get("category")) or "marketing"
            if t.status != "APPROVED":
                found.append(("template_not_approved", {"template": m.template_name, "language": m.template_language,
                                                        "status_at_send": t.status, "ledger_entry": t.entry}))
            if category == "marketing":
                c = self.consent.state(m.stream, m.conversation, "marketing", at)
                if c.status == "unknown":
                    found.append(("marketing_without_opt_in", {"category": category, "consent": None}))
        c = self.consent.state(m.stream, m.conversation, category, at)
        if c.status == "opted_out":
            found.append(("opted_out_contact", {"category": category, "consent_entry": c.entry}))
        if m.type != "template":
            w = self.windows.state(m.stream, m.conversation, m.origin, at)
            if w.restricted and not w.open:
                found.append(("outside_service_window", {"channel": m.origin, "window": "closed",
                                                         "rule": "free-form messages need an inbound message in "
                                                                 "the last 24 hours"}))
        if not found:
            return 0
        b = system_builder(self.keyring)
        for kind, evidence in found:
            body = {"violation": kind, "message": m.natural_key, "wamid": m.wamid, "sent_at": at.isoformat(),
                    "channel": m.origin, "type": m.type, "evidence": evidence}
            b.add(m.stream, f"violation:{kind}:{key_part(m.wamid or m.natural_key)}", "violation", canonical_json(body),
                  [subject_key_id(m.conversation)], tenant=m.tenant, wamid=m.wamid, ref_wamid=m.wamid,
                  conversation=m.conversation, origin=m.origin, direction="outbound", type=kind, status="open",
                  template_name=m.template_name, template_language=m.template_language, event_time=at)
        with self.engine.begin() as conn:
            before = set(conn.execute(sa.select(events.c.natural_key).where(
                events.c.stream == m.stream, events.c.natural_key.in_([r["natural_key"] for r in b.rows]))).scalars())
            append_events(conn, b)
        return len([r for r in b.rows if r["natural_key"] not in before])

    def list(self, stream: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        """Every violation with its evidence (decrypted), oldest first."""
        q = sa.select(events).where(events.c.kind == "violation").order_by(events.c.event_time, events.c.id)
        if stream:
            q = q.where(events.c.stream == stream)
        if kind:
            q = q.where(events.c.type == kind)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        out = []
        for r in rows:
            try:
                doc = json.loads(self.keyring.open_record(r))
            except KeyDestroyedError:
                doc = {"violation": r.type, "wamid": r.wamid, "evidence": "(erased)"}
            out.append({"stream": r.stream, "natural_key": r.natural_key, **doc})
        return out
