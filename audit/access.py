"""Audited reads: the one way any front end (API, CLI, console) reads archived data or ledger state.

Every read here returns an `Answer`: the result and the exact bytes (compact JSON) that leave the
archive. Before the answer is handed back, one *access event* is written to the sealed audit
stream: who (actor, role, how they signed in, their tenants), what (action, query or ids, result
count) and the SHA-256 of those bytes. If that write fails, the read fails (`AuditUnavailable`,
503 / exit 6) and nothing is returned. A front end sends `Answer.body` as it is (the API) or shows
`Answer.result` (the CLI's tables), never anything it read around this module.

Tenants (WABA ids) are enforced here too: a principal scoped to some tenants gets the same
`NotFound` for a record of another tenant as for a record that does not exist, and its counts,
lists and reports include only its own tenants.

Routes that *change* state (holds, accounts, send-log) are not reads; their own modules put them
on the audit stream.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
import structlog

from archiver.crypto import PublicKey
from archiver.db import events, segments, stream_tenant
from archiver.errors import Forbidden, InvalidInput, KeyDestroyedError, NotFound, Unavailable
from archiver.keys import KeyRing
from archiver.merkle import hash_leaf, root_from_inclusion_proof
from archiver.normalize import AUDIT_STREAM, append_audit
from archiver.objectstore import ObjectStore
from archiver.outbound import SendLog
from archiver.proofs import ProofService
from archiver.segments import sealed_records
from archiver.sqlutil import as_utc
from audit import views
from audit.auth import Accounts, Principal
from audit.index import SearchIndex
from policies.checks import ComplianceChecks
from policies.completeness import latest_reports
from policies.consent import ConsentLedger
from policies.disposition import RetentionRun
from policies.holds import Hold, Holds
from policies.proposals import Proposals
from policies.retention import Schedules
from policies.templates import TemplateLedger

log = structlog.get_logger("strongroom.access")

ACCESS_KIND = "access"  # audit-stream kind of access events
# Who may read what. The API's routes declare the same sets (`audit.http.rule`); the CLI's local
# operator (`local_operator`) is the shell of the server, which holds the keys, and reads all.
READERS = frozenset({"auditor", "compliance", "regulator"})
TRAIL_READERS = frozenset({"compliance", "regulator"})
ADMIN = frozenset({"admin"})
COMPLIANCE = frozenset({"compliance"})  # holds, approvals: decisions, not reads
OPERATOR = "operator"


class Services(Protocol):
    """What the reads need from the archive (`strongroom.runtime.Archive` provides it)."""

    @property
    def engine(self) -> sa.Engine: ...
    @property
    def keyring(self) -> KeyRing: ...
    @property
    def store(self) -> ObjectStore: ...
    @property
    def public_key(self) -> PublicKey: ...
    @property
    def schedules(self) -> Schedules: ...
    def holds(self) -> Holds: ...
    def consent(self) -> ConsentLedger: ...
    def templates(self) -> TemplateLedger: ...
    def compliance(self) -> ComplianceChecks: ...
    def retention_run(self, acting: bool = True) -> RetentionRun: ...
    def search_index(self) -> SearchIndex: ...
    def accounts(self) -> Accounts: ...
    def send_log(self) -> SendLog: ...
    def proposals(self) -> Proposals: ...
    @property
    def settings(self) -> Any: ...


class AuditUnavailable(Unavailable):
    """The access event could not be written, so the read is refused."""

    code = "audit_unavailable"

    def __init__(self, action: str) -> None:
        self.action = action
        super().__init__("the access audit trail could not be written, so nothing is returned")


@dataclass(frozen=True)
class Attachment:
    """An attachment's plaintext, the type its webhook declared, and the SHA-256 of the bytes."""

    data: bytes
    mime_type: str
    sha256: str


@dataclass(frozen=True)
class Answer:
    """What one audited read returned: `body` is exactly what was hashed into the access event."""

    result: Any
    body: bytes
    count: int


def local_operator(name: str) -> Principal:
    """The CLI's principal when nobody signed in: the server's shell (it holds the keys)."""
    return Principal(id=f"cli:{name}", name=name, role=OPERATOR, tenants=None, via="cli", mfa=False)


def json_bytes(value: Any) -> bytes:
    """Compact JSON as every front end sends it (instants as ISO-8601 UTC, bytes as hex)."""
    def default(o: Any) -> Any:
        if isinstance(o, datetime):
            return as_utc(o).isoformat()  # as_utc(None) only for None
        if isinstance(o, date):
            return o.isoformat()
        if isinstance(o, bytes):
            return o.hex()
        raise TypeError(type(o).__name__)
    return json.dumps(value, default=default, ensure_ascii=False, separators=(",", ":")).encode()


def key_stream(object_key: str) -> str:
    """The stream named in an object key (`…/stream=<id>/…`)."""
    for part in object_key.split("/"):
        if part.startswith("stream="):
            return part[len("stream="):]
    return ""


def hold_view(h: Hold) -> dict[str, Any]:
    return {"id": h.id, "matter": h.matter, "scope": h.scope, "placed_by": h.placed_by, "placed_at": h.placed_at,
            "released_at": h.released_at, "objects": len(h.objects)}


class Access:
    """Audited, tenant-aware reads over one archive (one instance per process is enough)."""

    def __init__(self, archive: Services) -> None:
        self.archive = archive
        self.engine, self.keyring = archive.engine, archive.keyring
        self.proofs = ProofService(archive.engine)
        self._tenant_of: dict[str, str] = {}

    # -- tenants --------------------------------------------------------------------------------

    def tenant(self, stream: str) -> str | None:
        if stream not in self._tenant_of:
            with self.engine.connect() as conn:
                t = stream_tenant(conn, stream)
            if t is None:
                return None  # unknown yet: do not cache
            self._tenant_of[stream] = t
        return self._tenant_of[stream]

    def visible_stream(self, p: Principal, stream: str) -> bool:
        return p.tenants is None or p.sees(self.tenant(stream))

    def hold_visible(self, p: Principal, scope: dict[str, Any]) -> bool:
        streams = scope.get("streams") or []
        return p.tenants is None or (bool(streams) and all(self.visible_stream(p, s) for s in streams))

    # -- the access event -----------------------------------------------------------------------

    def event(self, p: Principal, action: str, query: dict[str, Any], body_sha256: str, count: int,
              ids: Sequence[str]) -> None:
        """Write one access event; AuditUnavailable (nothing may be returned) if it fails."""
        try:
            append_audit(self.engine, self.keyring, ACCESS_KIND, action, p.actor, {
                "role": p.role, "via": p.via, "tenants": sorted(p.tenants) if p.tenants is not None else "*",
                "break_glass": p.role == "regulator", "query": _sealable(query), "ids": list(ids[:1000]),
                "ids_total": len(ids), "count": count, "result_sha256": body_sha256})
        except Exception as e:
            log.error("access_audit.failed", action=action, error=type(e).__name__)
            raise AuditUnavailable(action) from e

    def answer(self, p: Principal, action: str, query: dict[str, Any], result: Any, count: int,
               ids: Sequence[str]) -> Answer:
        """Serialise the result, write its access event, then (only then) hand it back."""
        body = json_bytes(result)
        self.event(p, action, query, hashlib.sha256(body).hexdigest(), count, ids)
        return Answer(result, body, count)

    @staticmethod
    def allow(p: Principal, roles: frozenset[str]) -> None:
        if p.role != OPERATOR and p.role not in roles:
            raise Forbidden(f"role {p.role} may not read this")

    # -- search and records ---------------------------------------------------------------------

    def search(self, p: Principal, q: str, limit: int = 50, cursor: str | None = None,
               filters: dict[str, str] | None = None, start: datetime | None = None,
               end: datetime | None = None) -> Answer:
        """Messages matching `q`, oldest first, with an exact total and a stable cursor."""
        self.allow(p, READERS)
        filters = filters or {}
        page = self.archive.search_index().search(q, tenants=set(p.tenants) if p.tenants is not None else None,
                                                  limit=limit, cursor=cursor, filters=filters, start=start, end=end)
        result = {"total": page.total, "parsed": page.query, "next_cursor": page.next_cursor, "items": page.items}
        return self.answer(p, "search", {"q": q, "filters": filters, "from": _iso(start), "to": _iso(end),
                                         "cursor": cursor},
                           result, page.total, [f"{h['stream']}/{h['seq']}" for h in page.items])

    def search_scope(self, p: Principal, q: str, filters: dict[str, Any] | None = None,
                     start: datetime | None = None, end: datetime | None = None, cap: int = 10_000) -> list[str]:
        """The conversations every hit of a search belongs to (to place a hold on the search), within
        the reader's tenants; one access event (hashes of the ids, never the query's hits' content).

        Raises:
            InvalidInput: more than `cap` conversations (narrow the search, or hold by number).
        """
        self.allow(p, READERS)
        index, cursor, found = self.archive.search_index(), None, set[str]()
        tenants = set(p.tenants) if p.tenants is not None else None
        while True:
            page = index.search(q, tenants=tenants, limit=500, cursor=cursor, filters=filters or {}, start=start,
                                end=end)
            found.update(h["conversation"] for h in page.items if h.get("conversation"))
            if len(found) > cap:
                raise InvalidInput(f"the search spans more than {cap} conversations: narrow it, or hold by number")
            cursor = page.next_cursor
            if not cursor:
                break
        conversations = sorted(found)
        self.answer(p, "search.scope", {"q": q, "filters": filters or {}, "from": _iso(start), "to": _iso(end)},
                    {"conversations": conversations}, len(conversations), conversations)
        return conversations

    def record(self, p: Principal, stream: str, seq: int) -> Answer:
        """One record, decrypted, with its inclusion proof to the newest signed checkpoint."""
        self.allow(p, READERS)
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(events).where(events.c.stream == stream, events.c.seq == seq)).first()
            seg = conn.execute(sa.select(segments).where(segments.c.stream == stream, segments.c.first_seq <= seq,
                                                         segments.c.last_seq >= seq)).first()
            top = conn.execute(sa.select(segments.c.last_seq, segments.c.checkpoint_key).where(
                segments.c.stream == stream, segments.c.checkpoint_key.is_not(None))
                .order_by(segments.c.last_seq.desc()).limit(1)).first()
        if r is None or not p.sees(r.tenant) or not self.visible_stream(p, stream):
            raise NotFound("no such record")
        view = views.record_view(self.keyring, r)
        view["proof"] = self._proof(stream, seq, seg, top)
        return self.answer(p, "record", {"stream": stream, "seq": seq}, view, 1, [f"{stream}/{seq}"])

    def attachment(self, p: Principal, stream: str, seq: int) -> Attachment:
        """The bytes of one stored attachment (a sealed ``media`` record), decrypted and checked
        against the hashes its record seals; one access event names the record and the bytes' hash."""
        from archiver.media import open_media

        self.allow(p, READERS)
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(events).where(events.c.stream == stream, events.c.seq == seq)).first()
        # (a media record is written by the fetcher, not a webhook: its number's tenant is its own)
        if r is None or r.kind != "media" or not p.sees(r.tenant or self.tenant(stream)) \
                or not self.visible_stream(p, stream):
            raise NotFound("no such attachment")
        link = views.content(self.keyring, r)
        if not isinstance(link, dict) or not link.get("object_key"):
            raise NotFound("this attachment can no longer be read (erased or disposed of)")
        try:
            obj = self.archive.store.get(str(link["object_key"]))
        except Exception as e:  # (the sealed record names an object the store does not give back)
            log.error("attachment.unreadable", stream=stream, seq=seq, error=type(e).__name__)
            raise Unavailable("the stored attachment could not be read: run strongroom verify") from e
        if hashlib.sha256(obj).hexdigest() != link.get("object_sha256"):
            raise Unavailable("the stored attachment does not match the hash its sealed record holds")
        try:
            data = open_media(self.keyring, stream, str(link["media_id"]), r.subject_key_id, obj)
        except KeyDestroyedError as e:
            raise NotFound("this attachment can no longer be read (erased or disposed of)") from e
        digest = hashlib.sha256(data).hexdigest()
        if digest != link.get("sha256"):
            raise Unavailable("the decrypted attachment does not match the hash its sealed record holds")
        self.event(p, "attachment", {"stream": stream, "seq": seq}, digest, 1, [f"{stream}/{seq}"])
        return Attachment(data, str(link.get("mime_type") or "application/octet-stream"), digest)

    def consistency(self, p: Principal, stream: str, size1: int, size2: int | None = None) -> Answer:
        """An RFC 9162 consistency proof between two tree sizes of a stream (default: to its newest
        checkpoint), for a verifier holding two signed tree heads (a bundle's snapshot and a holder's
        checkpoint). Hashes only; it needs no trust: it verifies against both signed roots or not."""
        self.allow(p, READERS | TRAIL_READERS)
        if not self.visible_stream(p, stream):
            raise NotFound("no such stream")
        with self.engine.connect() as conn:
            top = conn.execute(sa.select(sa.func.max(segments.c.last_seq)).where(
                segments.c.stream == stream, segments.c.checkpoint_key.is_not(None))).scalar()
        newest = top + 1 if top is not None else 0
        size2 = newest if size2 is None else size2
        if not 0 < size1 <= size2 <= newest:
            raise InvalidInput(f"sizes must satisfy 0 < from ({size1}) <= to ({size2}) <= {newest}, "
                               "the newest checkpoint's tree size")
        proof = self.proofs.consistency(stream, size1, size2) if size1 < size2 else []
        return self.answer(p, "proof.consistency", {"stream": stream, "from": size1, "to": size2},
                           {"stream": stream, "from_size": size1, "to_size": size2,
                            "proof": [h.hex() for h in proof]}, 1, [])

    def _proof(self, stream: str, seq: int, seg: Any, top: Any) -> dict[str, Any] | None:
        if top is None or top.last_seq < seq:
            return None  # not yet under a published checkpoint
        size = top.last_seq + 1
        leaf = self.proofs.leaf_hash(stream, seq)
        path = self.proofs.inclusion(stream, seq, size)
        checkpoint = json.loads(self.archive.store.get(top.checkpoint_key))
        out: dict[str, Any] = {
            "leaf_index": seq, "tree_size": size, "leaf_hash": leaf.hex(), "path": [h.hex() for h in path],
            "root_from_path": root_from_inclusion_proof(seq, size, leaf, path).hex(),
            "checkpoint_key": top.checkpoint_key, "signed_checkpoint": checkpoint,
            "segment_key": seg.object_key if seg is not None else None, "sealed_record": None}
        if seg is not None and seg.disposed_at is None:
            canon = dict(sealed_records(self.archive.store.get(seg.object_key), [seq])).get(seq)
            if canon is not None:  # the canonical sealed bytes: ciphertext only, so a third party can hash them
                out["sealed_record"] = base64.b64encode(canon).decode()
                out["sealed_record_matches_leaf"] = hash_leaf(canon) == leaf
                key = self.keyring.key_for_sealed(canon)  # opens this record's ciphertext (and, since
                # records have their own keys, no other): the reader can check the content against the seal
                out["content_key"] = base64.b64encode(key).decode() if key is not None else None
        return out

    def thread(self, p: Principal, conversation: str, stream: str | None = None, start: datetime | None = None,
               end: datetime | None = None, limit: int = 500, after: int | None = None) -> Answer:
        """The conversation as it happened (see `audit.views`), a page of `limit` items after `after`."""
        self.allow(p, READERS)
        with self.engine.connect() as conn:
            rows, gaps = views.thread_rows(conn, conversation, p.sees, stream, start, end)
        items = views.thread_items(self.keyring, rows, gaps)
        first = 0
        if after is not None:
            first = next((i + 1 for i, it in enumerate(items) if it["row"] == after), len(items))
        page = items[first:first + limit]
        more = first + limit < len(items)
        result = {"conversation": conversation, "total": len(items), "numbers": sorted({r.stream for r in rows}),
                  "items": page, "next_after": page[-1]["row"] if more and page else None}
        return self.answer(p, "thread", {"conversation": conversation, "stream": stream, "from": _iso(start),
                                         "to": _iso(end), "after": after}, result, len(items),
                           [it["record"]["id"] or it["record"]["natural_key"] for it in page])

    # -- ledgers --------------------------------------------------------------------------------

    def consent(self, p: Principal, stream: str, subject: str | None, category: str, at: datetime | None) -> Answer:
        """Consent of a contact (subject id) on a number as of `at` (default now), with its history.

        `category` "*" gives every category (the CLI's view); `subject` None: nobody held the number."""
        from policies.consent import CATEGORIES

        self.allow(p, READERS)
        if not self.visible_stream(p, stream):
            raise NotFound("no such number")
        when = at or datetime.now(UTC)
        ledger = self.archive.consent()
        history: list[dict[str, Any]] = []
        result: dict[str, Any] = {"stream": stream, "subject": subject, "category": category, "at": when}
        if subject is not None:
            history = [h for h in ledger.history(stream, subject) if as_utc(datetime.fromisoformat(h["at"])) <= when]
            if category == "*":
                result["state"] = {c: ledger.state(stream, subject, c, when).__dict__ for c in CATEGORIES}
            else:
                state = ledger.state(stream, subject, category, when)
                result.update(state=state.status, deciding_entry=state.entry)
        result["history"] = history
        return self.answer(p, "ledger.consent", {"stream": stream, "subject": subject, "category": category,
                                                 "at": when.isoformat()}, result, len(history),
                           [subject] if subject else [])

    def template(self, p: Principal, tenant: str, name: str, language: str, at: datetime | None) -> Answer:
        """A template's approval status, category and body versions as of `at` (default now)."""
        self.allow(p, READERS)
        if not p.sees(tenant):
            raise NotFound("no such tenant")
        when = at or datetime.now(UTC)
        s = self.archive.templates().state(tenant, name, language, when)
        result = {"tenant": tenant, "name": name, "language": language, "at": when, "status": s.status,
                  "category": s.category, "body_versions": s.version, "body_sha256": s.body_sha256,
                  "deciding_entry": s.entry}
        return self.answer(p, "ledger.templates", {"tenant": tenant, "name": name, "language": language,
                                                   "at": when.isoformat()}, result, 1, [f"{tenant}/{name}/{language}"])

    # -- holds ----------------------------------------------------------------------------------

    def holds(self, p: Principal, include_released: bool = True) -> Answer:
        self.allow(p, READERS)
        found = [hold_view(h) for h in self.archive.holds().all(include_released) if self.hold_visible(p, h.scope)]
        return self.answer(p, "holds.list", {"include_released": include_released}, {"holds": found},
                           len(found), [h["id"] for h in found])

    # -- reports --------------------------------------------------------------------------------

    def completeness(self, p: Principal, day: date | None = None, stream: str | None = None,
                     reports: Callable[[date], list[dict[str, Any]]] | None = None) -> Answer:
        """The newest sealed completeness report per number for `day` (default yesterday, UTC).

        `reports` gives them instead of the sealed ones (the CLI's reconciliation has just made them)."""
        self.allow(p, READERS)
        the_day = day or (datetime.now(UTC).date() - timedelta(days=1))
        made = reports(the_day) if reports else latest_reports(self.engine, self.keyring, the_day, stream)
        found = [r for r in made if self.visible_stream(p, r["stream"])]
        return self.answer(p, "report.completeness", {"day": the_day.isoformat(), "stream": stream},
                           {"day": the_day, "reports": found}, len(found), [r["stream"] for r in found])

    def retention(self, p: Principal) -> Answer:
        """The schedule in force and objects overdue for disposition (expected: none)."""
        self.allow(p, READERS)
        now = datetime.now(UTC)
        schedule = json.loads(self.archive.schedules.current().to_json())
        overdue = self.archive.retention_run(acting=False).overdue(now)
        if p.tenants is not None:  # the rules that apply to their tenants and numbers, nobody else's
            overdue = [o for o in overdue if self.visible_stream(p, key_stream(o["key"]))]
            schedule["tenants"] = {t: v for t, v in (schedule.get("tenants") or {}).items() if p.sees(t)}
            schedule["numbers"] = {s: v for s, v in (schedule.get("numbers") or {}).items()
                                   if self.visible_stream(p, s)}
        return self.answer(p, "report.retention", {"at": now.isoformat()},
                           {"at": now, "schedule": schedule, "overdue": overdue}, len(overdue),
                           [o["key"] for o in overdue])

    def dashboard(self, p: Principal, days: int = 30, now: datetime | None = None) -> Answer:
        """Per number the reader sees: messages per day by origin over `days`, open gaps, days since
        the app side was last heard from (WhatsApp unlinks coexistence at about 14), the last sealed
        segment, open violations, each day's completeness verdict (complete, gaps, or not yet
        reconciled); and the archive's last verification. Counts only, no content."""
        self.allow(p, READERS)
        now = now or datetime.now(UTC)
        since = now - timedelta(days=days)
        day = sa.func.date(events.c.event_time)
        with self.engine.connect() as conn:
            numbers = [s for s in conn.execute(sa.select(segments.c.stream).where(segments.c.stream != AUDIT_STREAM)
                                               .distinct()).scalars()
                       if not s.startswith("waba-") and self.visible_stream(p, s)]  # (account streams: no messages)
            per_day = conn.execute(sa.select(events.c.stream, day.label("day"), events.c.origin, sa.func.count())
                                   .where(events.c.kind == "message", events.c.event_time >= since,
                                          events.c.stream.in_(numbers))
                                   .group_by(events.c.stream, day, events.c.origin)).all()
            app_last = dict(conn.execute(sa.select(events.c.stream, sa.func.max(events.c.event_time)).where(
                events.c.origin == "app", events.c.stream.in_(numbers)).group_by(events.c.stream)).all())
            sealed_last = dict(conn.execute(sa.select(segments.c.stream, sa.func.max(segments.c.created_at)).where(
                segments.c.stream.in_(numbers)).group_by(segments.c.stream)).all())
            gaps = conn.execute(sa.select(events.c.stream, events.c.natural_key, events.c.status).where(
                events.c.kind.in_(("gap", "gap_closed")), events.c.stream.in_(numbers))).all()
            verified = conn.execute(sa.select(sa.func.max(events.c.event_time)).where(
                events.c.stream == AUDIT_STREAM, events.c.type == "verify")).scalar()
            violations: dict[str, int] = dict(conn.execute(sa.select(events.c.stream, sa.func.count()).where(
                events.c.kind == "violation", events.c.stream.in_(numbers)).group_by(events.c.stream)).all())
            # the newest completeness report's verdict per number and day (the row says it unencrypted)
            reports = conn.execute(sa.select(events.c.type, events.c.natural_key, events.c.status).where(
                events.c.stream == AUDIT_STREAM, events.c.kind == "completeness_report",
                events.c.type.in_(numbers), events.c.received_at >= since - timedelta(days=2))
                .order_by(events.c.id)).all()
        closed = {(g.stream, g.natural_key.removeprefix("gap_closed:")) for g in gaps if g.status == "closed"}
        open_gaps = Counter(g.stream for g in gaps if g.status == "open"
                            and (g.stream, g.natural_key.removeprefix("gap:")) not in closed)
        dates = [(since + timedelta(days=i + 1)).date().isoformat() for i in range(days)]
        series: dict[str, dict[str, dict[str, int]]] = {n: {d: {} for d in dates} for n in numbers}
        for r in per_day:  # one pass over the counts, whatever the number of numbers
            if str(r.day) in series[r.stream]:
                series[r.stream][str(r.day)][r.origin or "?"] = int(r[3])
        calendar: dict[str, dict[str, str | None]] = {n: dict.fromkeys(dates) for n in numbers}
        for r in reports:  # completeness:<stream>:<day>:<hash>; a later report of a day replaces an earlier
            report_day = r.natural_key.split(":")[2] if r.natural_key.count(":") >= 3 else ""
            if report_day in calendar[r.type]:
                calendar[r.type][report_day] = r.status
        out = []
        for stream in sorted(numbers):
            last_app = as_utc(app_last.get(stream))
            out.append({
                "stream": stream, "tenant": self.tenant(stream), "per_day": series[stream],
                "completeness": calendar[stream],
                "messages": sum(sum(v.values()) for v in series[stream].values()),
                "open_gaps": open_gaps.get(stream, 0),
                "app_silent_days": (now - last_app).days if last_app else None,
                "last_sealed": as_utc(sealed_last.get(stream)), "violations": violations.get(stream, 0)})
        result = {"at": now, "days": days, "numbers": out, "last_verification": as_utc(verified)}
        return self.answer(p, "dashboard", {"days": days}, result, len(out), [n["stream"] for n in out])

    def violations(self, p: Principal, stream: str | None = None, kind: str | None = None) -> Answer:
        """Compliance violations (consent, window, template, pricing) with their evidence."""
        self.allow(p, READERS)
        found = [v for v in self.archive.compliance().list(stream, kind) if self.visible_stream(p, v["stream"])]
        return self.answer(p, "violations", {"stream": stream, "type": kind}, {"violations": found}, len(found),
                           [v["natural_key"] for v in found])

    def proposals(self, p: Principal, state: str | None = None) -> Answer:
        """Four-eyes proposals and their decisions (summaries only)."""
        self.allow(p, COMPLIANCE | ADMIN)
        found = self.archive.proposals().list(state)
        return self.answer(p, "proposals", {"state": state}, {"proposals": found}, len(found),
                           [f["id"] for f in found])

    def audit_trail(self, p: Principal, start: datetime | None = None, end: datetime | None = None,
                    limit: int = 1000, after: int = 0) -> Answer:
        """The archive's own audit stream (accesses, holds, keys, decisions), decrypted."""
        self.allow(p, TRAIL_READERS)
        if p.tenants is not None:
            raise Forbidden("the audit trail spans all tenants: it needs an all-tenant principal")
        q = sa.select(events).where(events.c.stream == AUDIT_STREAM, events.c.id > after)
        if start is not None:
            q = q.where(events.c.event_time >= start)
        if end is not None:
            q = q.where(events.c.event_time < end)
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(events.c.id).limit(limit)).all()
        entries = [{"row": r.id, **views.record_view(self.keyring, r)} for r in rows]
        return self.answer(p, "audit_trail", {"from": _iso(start), "to": _iso(end), "after": after},
                           {"entries": entries, "next_after": rows[-1].id if len(rows) == limit else None},
                           len(entries), [e["natural_key"] for e in entries])

    # -- accounts -------------------------------------------------------------------------------

    def principals(self, p: Principal) -> Answer:
        """Accounts and API keys (never their secrets)."""
        self.allow(p, ADMIN)
        found = self.archive.accounts().list()
        return self.answer(p, "admin.principals", {}, {"principals": found}, len(found), [f["id"] for f in found])


def _sealable(value: Any) -> Any:
    """What a caller asked for, in a form RFC 8785 seals whatever they typed: integers beyond
    ±2^53 (an `after=9223372036854775807`) become strings rather than failing the access event."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if -(2**53) < value < 2**53 else str(value)
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, dict):
        return {str(k): _sealable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_sealable(v) for v in value]
    return value


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None
