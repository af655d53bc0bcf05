"""Completeness: reconcile what was archived against what it refers to, and seal a daily report.

A reconciliation run for one UTC day, for every stream (phone number) active that day:

1. **Unarchived references** — every wamid referenced by a status, a reply context, a
   reaction, an edit or a revoke (received more than `grace` ago) with no archived message
   becomes a ``gap`` record (``unarchived_reference``, status ``open``); a later run that finds
   the message (Meta redelivered it) adds a ``closed`` record for the same gap. Messages sent
   through the Cloud API by other software never reach us as webhooks, so statuses for them
   show up here too: their content is a real hole in the archive unless captured at send time.
2. **History chunks** — once the import reports progress 100 (or has been quiet for `grace`),
   every missing ``chunk_order`` below the highest seen is a gap; a late chunk closes it.
3. **App silence** — a coexistence number whose app side (echoes, contact sync) has been
   silent for `silence_warning` gets a ``warning`` record: WhatsApp unlinks the API at ~14 days.
4. **Disconnects** — ``PARTNER_REMOVED``/``ACCOUNT_OFFBOARDED``/… open a ``disconnect`` gap at the
   event time; the first reconnect event or the first capture on that account after it closes
   the gap with an end time.

Gap records from capture itself (131060 content withheld, 2593109 history declined, media
that could not be fetched) are written when they happen and counted here. Each run then seals
a **completeness report** per stream and day on the audit stream (counts by origin and kind,
gaps opened/closed/open, warnings, history progress, coverage limits). Every gap and report is
a sealed record: the evidence of what is missing is as tamper-evident as what is there.
Runs are idempotent (natural keys) and safe to repeat.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
import structlog

from archiver.db import events, media
from archiver.keys import KeyRing
from archiver.kinds import key_part, obj
from archiver.normalize import AUDIT_KEY, AUDIT_STREAM, UNROUTED, EventBuilder, append_events, system_builder
from archiver.records import canonical_json
from archiver.sqlutil import Row, as_utc, utcnow
from exporters.verify_bundle import list_digest

log = structlog.get_logger("strongroom.completeness")

# What coexistence never delivers to the API, listed in every report and export.
COVERAGE_LIMITS: dict[str, str] = {
    "group_chats": "Group chats are not synced to the Cloud API in coexistence mode.",
    "broadcast_lists": "Broadcast list messages sent from the Business App are not mirrored.",
    "disappearing_messages": "Disappearing messages are not synced.",
    "view_once": "View-once media is not synced.",
    "live_location": "Live location sharing is not synced.",
    "companion_clients": "Messages handled on unsupported companion clients reach the API as error 131060 "
                         "without content.",
    "history_window": "The history import covers 180 days before onboarding; media only for the last 14 days.",
    "api_sends": "Messages sent through the Cloud API by other software arrive only as statuses; their "
                 "content is archived only if captured at send time.",
}
DISCONNECT_EVENTS = frozenset({"PARTNER_REMOVED", "ACCOUNT_OFFBOARDED", "ACCOUNT_DELETED", "PARTNER_APP_UNINSTALLED"})
RECONNECT_EVENTS = frozenset({"ACCOUNT_RECONNECTED", "PARTNER_ADDED", "PARTNER_APP_INSTALLED"})
_CHUNK = re.compile(r"chunk:(-?\d+):progress:(-?\d+|None)")


@dataclass
class StreamDay:
    """The completeness report of one stream for one UTC day."""

    stream: str
    day: str
    counts: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    media: dict[str, int] = field(default_factory=dict)
    gaps_opened: list[dict[str, Any]] = field(default_factory=list)  # by this run
    gaps_closed: list[dict[str, Any]] = field(default_factory=list)  # by this run
    gaps_in_day: list[dict[str, Any]] = field(default_factory=list)  # every gap record dated this day
    open_gaps: int = 0  # open (closable) gaps of the stream not yet closed, at report time
    warnings: list[dict[str, Any]] = field(default_factory=list)
    history: dict[str, Any] = field(default_factory=dict)
    last_app_activity: str | None = None
    # What was compared, so anyone holding the records recomputes the report: the wamids of the
    # day's conversation messages archived, and of what the day's records referenced (sorted).
    archived_wamids: list[str] = field(default_factory=list)
    referenced_wamids: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.gaps_in_day and not self.open_gaps and not self.warnings

    def as_dict(self) -> dict[str, Any]:
        return {"stream": self.stream, "day": self.day, "complete": self.complete, "counts": self.counts,
                "statuses": self.statuses, "media": self.media, "gaps_opened": self.gaps_opened,
                "gaps_closed": self.gaps_closed, "gaps_in_day": self.gaps_in_day, "open_gaps": self.open_gaps, "warnings": self.warnings,
                "history": self.history, "last_app_activity": self.last_app_activity,
                "coverage_limits": COVERAGE_LIMITS, "archived_wamids": self.archived_wamids,
                "archived_sha256": list_digest(self.archived_wamids), "referenced_wamids": self.referenced_wamids,
                "referenced_sha256": list_digest(self.referenced_wamids)}


def _iso(t: datetime | None) -> str | None:
    return as_utc(t).isoformat() if t is not None else None


class Reconciler:
    def __init__(self, engine: sa.Engine, keyring: KeyRing, grace: timedelta = timedelta(minutes=15),
                 silence_warning: timedelta = timedelta(days=12)) -> None:
        self.engine = engine
        self.keyring = keyring
        self.grace = grace
        self.silence_warning = silence_warning

    # -- the run ------------------------------------------------------------------------------

    def run(self, day: date, streams: list[str] | None = None, now: datetime | None = None) -> list[StreamDay]:
        """Reconcile `day` (UTC) for `streams` (default: every stream with events that day or
        open gaps), write gap/warning records and one sealed report per stream. Returns the reports."""
        now = now or utcnow()
        lo = datetime.combine(day, time(), UTC)
        hi = lo + timedelta(days=1)
        targets = streams or self._active_streams(lo, hi)
        reports = []
        for stream in targets:
            b = system_builder(self.keyring, now)
            rep = StreamDay(stream, day.isoformat())
            with self.engine.connect() as conn:
                if stream.startswith("waba-"):
                    self._disconnects(conn, b, rep, stream, now)
                else:
                    self._references(conn, b, rep, stream, lo, hi, now)
                    self._history(conn, b, rep, stream, now)
                    self._app_silence(conn, b, rep, stream, now)
            with self.engine.begin() as conn:
                append_events(conn, b)
            with self.engine.connect() as conn:
                self._count(conn, rep, stream, lo, hi)
            report = system_builder(self.keyring, now)
            self._seal_report(report, rep)
            with self.engine.begin() as conn:
                append_events(conn, report)
            if rep.gaps_opened or rep.warnings:
                log.warning("completeness.gaps", stream=stream, day=rep.day, opened=len(rep.gaps_opened),
                            warnings=len(rep.warnings), open=rep.open_gaps)
            reports.append(rep)
        return reports

    def _active_streams(self, lo: datetime, hi: datetime) -> list[str]:
        with self.engine.connect() as conn:
            day_streams = conn.execute(sa.select(events.c.stream).distinct().where(
                sa.or_(events.c.event_time.between(lo, hi), events.c.received_at.between(lo, hi)))).scalars()
            gap_streams = conn.execute(sa.select(events.c.stream).distinct().where(events.c.kind == "gap")).scalars()
            found = set(day_streams) | set(gap_streams)
        return sorted(found - {AUDIT_STREAM, UNROUTED})

    # -- gaps ---------------------------------------------------------------------------------

    def _gap(self, b: EventBuilder, rep: StreamDay, stream: str, natural_key: str, gap: str, status: str,
             body: dict[str, Any], at: datetime | None, ref: str | None = None) -> None:
        entry = {"gap": gap, "status": status, **body}
        b.add(stream, natural_key, "gap", canonical_json(entry), [], ref_wamid=ref, type=gap, status=status,
              event_time=at or b.received_at)
        (rep.gaps_closed if status == "closed" else rep.gaps_opened).append(
            {"natural_key": natural_key, "gap": gap, **{k: v for k, v in body.items() if k != "referenced_by"}})

    def _existing(self, conn: sa.Connection, stream: str, prefix: str) -> set[str]:
        return set(conn.execute(sa.select(events.c.natural_key).where(
            events.c.stream == stream, events.c.kind == "gap", events.c.natural_key.like(prefix + "%"))).scalars())

    def _references(self, conn: sa.Connection, b: EventBuilder, rep: StreamDay, stream: str, lo: datetime,
                    hi: datetime, now: datetime) -> None:
        when = sa.func.coalesce(events.c.event_time, events.c.received_at)
        ref = sa.case((events.c.kind == "status", events.c.wamid), else_=events.c.ref_wamid)
        rows = conn.execute(sa.select(ref.label("ref"), events.c.kind, events.c.natural_key, when.label("at")).where(
            events.c.stream == stream, events.c.kind.in_(["status", "message"]), ref.is_not(None),
            when >= lo, when < hi, events.c.received_at <= now - self.grace)).all()
        by_ref: dict[str, list[Row]] = defaultdict(list)
        for r in rows:
            by_ref[r.ref].append(r)
        archived = self._archived(conn, stream, list(by_ref))
        existing = self._existing(conn, stream, "gap:unarchived:")
        for wamid in sorted(set(by_ref) - archived):
            nk = f"gap:unarchived:{key_part(wamid)}"
            if nk in existing:
                continue
            refs = by_ref[wamid]
            self._gap(b, rep, stream, nk, "unarchived_reference", "open", {
                "wamid": wamid, "referenced_by": [{"kind": r.kind, "natural_key": r.natural_key} for r in refs],
                "kinds": sorted({r.kind for r in refs})}, min(as_utc(r.at) for r in refs), ref=wamid)
        # gaps that were open and whose message has arrived since
        closed = self._existing(conn, stream, "gap_closed:unarchived:")
        open_gaps = conn.execute(sa.select(events.c.natural_key, events.c.ref_wamid).where(
            events.c.stream == stream, events.c.kind == "gap", events.c.natural_key.like("gap:unarchived:%"))).all()
        now_archived = self._archived(conn, stream, [g.ref_wamid for g in open_gaps])
        for g in open_gaps:
            nk = "gap_closed:" + g.natural_key[len("gap:"):]
            if g.ref_wamid in now_archived and nk not in closed:
                self._gap(b, rep, stream, nk, "unarchived_reference", "closed",
                          {"wamid": g.ref_wamid, "closes": g.natural_key, "resolution": "message archived"},
                          now, ref=g.ref_wamid)

    def _archived(self, conn: sa.Connection, stream: str, wamids: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(wamids), 500):
            found |= set(conn.execute(sa.select(events.c.wamid).where(
                events.c.stream == stream, events.c.kind == "message",
                events.c.wamid.in_(wamids[i:i + 500]))).scalars())
        return found

    def _history(self, conn: sa.Connection, b: EventBuilder, rep: StreamDay, stream: str, now: datetime) -> None:
        rows = conn.execute(sa.select(events.c.type, events.c.status, events.c.received_at).where(
            events.c.stream == stream, events.c.kind == "history_chunk")).all()
        if not rows:
            return
        seen: set[int] = set()
        progress = -1
        for r in rows:
            m = _CHUNK.fullmatch(r.status or "")
            if m:
                seen.add(int(m.group(1)))
                progress = max(progress, int(m.group(2)) if m.group(2) != "None" else -1)
        last = max(as_utc(r.received_at) for r in rows)
        done = progress >= 100 or now - last >= self.grace
        missing = sorted(set(range(1, max(seen) + 1)) - seen) if seen and done else []
        rep.history = {"chunks": len(seen), "progress": progress, "missing_chunks": missing,
                       "complete": done and not missing and progress >= 100}
        existing = self._existing(conn, stream, "gap:history_chunk:")
        for order in missing:
            nk = f"gap:history_chunk:{order}"
            if nk not in existing:
                self._gap(b, rep, stream, nk, "history_chunk_missing", "open",
                          {"chunk_order": order, "highest_seen": max(seen), "progress": progress}, now)
        closed = self._existing(conn, stream, "gap_closed:history_chunk:")
        for nk in sorted(existing):
            order = int(nk.rsplit(":", 1)[1])
            done_nk = "gap_closed:" + nk[len("gap:"):]
            if order in seen and done_nk not in closed:
                self._gap(b, rep, stream, done_nk, "history_chunk_missing", "closed",
                          {"chunk_order": order, "closes": nk, "resolution": "chunk arrived"}, now)

    def _app_silence(self, conn: sa.Connection, b: EventBuilder, rep: StreamDay, stream: str, now: datetime) -> None:
        last = as_utc(conn.execute(sa.select(sa.func.max(events.c.event_time)).where(
            events.c.stream == stream, events.c.origin == "app")).scalar())
        rep.last_app_activity = _iso(last)
        if last is None or now - last < self.silence_warning:
            return
        nk = f"warning:app_silence:{last.isoformat()}"
        entry = {"warning": "app_silence", "last_app_activity": last.isoformat(),
                 "silent_days": round((now - last).total_seconds() / 86400, 1),
                 "detail": "The Business App has not been used for this number; WhatsApp disconnects "
                           "coexistence after about 14 days without the app being opened."}
        b.add(stream, nk, "warning", canonical_json(entry), [], type="app_silence", status="warning", event_time=now)
        rep.warnings.append({"natural_key": nk, **entry})

    def _disconnects(self, conn: sa.Connection, b: EventBuilder, rep: StreamDay, stream: str, now: datetime) -> None:
        """One outage per disconnect until capture resumes; repeated disconnect events inside an
        outage (offboarded, then partner removed) are part of it, not new gaps."""
        tenant = stream[len("waba-"):]
        rows = conn.execute(sa.select(events).where(events.c.stream == stream, events.c.kind == "account_event",
                                                    events.c.status.in_(DISCONNECT_EVENTS | RECONNECT_EVENTS))
                            .order_by(events.c.event_time, events.c.id)).all()
        existing = self._existing(conn, stream, "gap:disconnect:") | self._existing(conn, stream, "gap_closed:disconnect:")
        i = 0
        while i < len(rows):
            r = rows[i]
            if r.status not in DISCONNECT_EVENTS:
                i += 1
                continue
            start = as_utc(r.event_time) or as_utc(r.received_at)
            assert start is not None
            end, why = self._resumed(conn, tenant, start, rows[i + 1:])
            j = i + 1
            while j < len(rows) and (end is None or (as_utc(rows[j].event_time) or start) < end):
                j += 1
            value = json.loads(self.keyring.open_record(r)).get("value", {})
            info = obj(value.get("disconnection_info"))
            nk = f"gap:disconnect:{start.isoformat()}"
            body = {"event": r.status, "start": start.isoformat(), "reason": info.get("reason"),
                    "initiated_by": info.get("initiated_by"), "evidence": r.natural_key,
                    "also": [x.natural_key for x in rows[i + 1:j] if x.status in DISCONNECT_EVENTS]}
            if nk not in existing:
                self._gap(b, rep, stream, nk, "disconnect", "open", body, start)
            done_nk = "gap_closed:" + nk[len("gap:"):]
            if end is not None and done_nk not in existing:
                self._gap(b, rep, stream, done_nk, "disconnect", "closed",
                          {**body, "end": end.isoformat(), "closes": nk, "resolution": why}, end)
            i = j

    def _resumed(self, conn: sa.Connection, tenant: str, start: datetime,
                 later: Sequence[Row]) -> tuple[datetime | None, str]:
        """When capture resumed after `start`: a reconnect event or the first live capture."""
        reconnect = next((as_utc(r.event_time) for r in later if r.status in RECONNECT_EVENTS), None)
        capture = as_utc(conn.execute(sa.select(sa.func.min(events.c.event_time)).where(
            events.c.tenant == tenant, events.c.kind.in_(["message", "status"]),
            events.c.origin.in_(["api", "app", "agent"]), events.c.event_time > start)).scalar())
        options = [(t, w) for t, w in ((reconnect, "reconnected"), (capture, "capture resumed")) if t is not None]
        return min(options) if options else (None, "")

    # -- counts and the sealed report ---------------------------------------------------------

    def _count(self, conn: sa.Connection, rep: StreamDay, stream: str, lo: datetime, hi: datetime) -> None:
        when = sa.func.coalesce(events.c.event_time, events.c.received_at)
        rows = conn.execute(sa.select(events.c.kind, events.c.origin, events.c.direction, events.c.status,
                                      events.c.modelled, sa.func.count().label("n"))
                            .where(events.c.stream == stream, when >= lo, when < hi)
                            .group_by(events.c.kind, events.c.origin, events.c.direction, events.c.status,
                                      events.c.modelled)).all()
        counts: Counter[str] = Counter()
        statuses: Counter[str] = Counter()
        for r in rows:
            if r.kind == "message":
                counts[f"message:{r.origin}:{r.direction}"] += r.n
            elif r.kind == "status":
                statuses[str(r.status)] += r.n
            else:
                counts[r.kind] += r.n
            if r.kind in ("change", "unparsed") and not r.modelled:
                counts["not_modelled"] += r.n  # archived raw and flagged: kinds we do not type yet
        rep.counts, rep.statuses = dict(sorted(counts.items())), dict(sorted(statuses.items()))
        rep.archived_wamids = sorted(set(conn.execute(sa.select(events.c.wamid).where(
            events.c.stream == stream, events.c.kind == "message", events.c.wamid.is_not(None),
            events.c.conversation.is_not(None), when >= lo, when < hi)).scalars()))
        ref = sa.case((events.c.kind == "status", events.c.wamid), else_=events.c.ref_wamid)
        rep.referenced_wamids = sorted(set(conn.execute(sa.select(ref).where(
            events.c.stream == stream, events.c.kind.in_(["status", "message"]), ref.is_not(None),
            when >= lo, when < hi)).scalars()) - {None})
        rep.media = dict(conn.execute(sa.select(media.c.state, sa.func.count()).where(media.c.stream == stream)
                                      .group_by(media.c.state)).all())
        gaps = conn.execute(sa.select(events.c.natural_key, events.c.type, events.c.status, events.c.event_time)
                            .where(events.c.stream == stream, events.c.kind == "gap")).all()
        rep.gaps_in_day = [{"natural_key": g.natural_key, "gap": g.type, "status": g.status}
                           for g in gaps if g.event_time is not None and lo <= as_utc(g.event_time) < hi]
        closed = {g.natural_key[len("gap_closed:"):] for g in gaps if g.status == "closed"}
        rep.open_gaps = sum(1 for g in gaps if g.status == "open" and g.natural_key[len("gap:"):] not in closed)

    def _seal_report(self, b: EventBuilder, rep: StreamDay) -> None:
        body = canonical_json(rep.as_dict())
        nk = f"completeness:{rep.stream}:{rep.day}:{hashlib.sha256(body).hexdigest()[:16]}"
        b.add(AUDIT_STREAM, nk, "completeness_report", body, [AUDIT_KEY], type=rep.stream,
              status="complete" if rep.complete else "gaps", event_time=b.received_at)


def latest_reports(engine: sa.Engine, keyring: KeyRing, day: date, stream: str | None = None) -> list[dict[str, Any]]:
    """The newest sealed report per stream for `day` (decrypted from the audit stream)."""
    pattern = f"completeness:{stream or '%'}:{day.isoformat()}:%"
    with engine.connect() as conn:
        rows = conn.execute(sa.select(events).where(
            events.c.stream == AUDIT_STREAM, events.c.kind == "completeness_report",
            events.c.natural_key.like(pattern)).order_by(events.c.id)).all()
    newest: dict[str, dict[str, Any]] = {}
    for r in rows:
        rep = json.loads(keyring.open_record(r))
        if rep["day"] == day.isoformat():
            newest[rep["stream"]] = rep
    return [newest[k] for k in sorted(newest)]
