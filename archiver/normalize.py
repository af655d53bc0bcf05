"""Raw-first normalisation: one inbox body → N events, each with encrypted content.

For every body:

1. every ``entry[i].changes[j]`` becomes a ``change`` event whose content is the *exact*
   bytes of that change as Meta sent them (so nothing is lost for kinds not yet modelled;
   those carry ``modelled = False``);
2. the handler for the change's field (`archiver.kinds`) adds typed events (messages of
   every origin, statuses, contact sync, preferences, template and account events);
3. each stream the body touches gets an ``envelope`` event with the literal text around the
   changes, so the original body can be re-created byte for byte from the archive;
4. a signed body that is not an envelope at all is kept whole as an ``unparsed`` event on the
   ``unrouted`` stream — flagged, never dropped.

Events are deduplicated on natural keys (``message:<wamid>`` whatever the origin — live, echo,
history or send log —, ``status:<wamid>:<status>:<timestamp>``, ``change:<sha256 of its bytes>``,
``envelope:<sha256 of the body>``, …), so redeliveries and re-batched retries add nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
import structlog
from ulid import ULID

from archiver import failpoints
from archiver.db import bind_stream, events, inbox, media
from archiver.errors import KeyDestroyedError, ObjectStoreError, RaceError
from archiver.identity import IdentityBook, from_us, subject_key_id, to_us
from archiver.inbox import Inbox
from archiver.jsonspans import SpanError, change_spans, split_pieces
from archiver.keys import KeyRing
from archiver.kinds import HANDLERS, Change, Person, obj, parse_unix, subjects_of
from archiver.records import canonical_json
from archiver.sqlutil import Row, as_utc, insert_ignore, utcnow

log = structlog.get_logger("strongroom.normalize")
T = TypeVar("T")
UNROUTED = "unrouted"
QUARANTINED = "quarantined"  # an inbox state: kept raw, set aside (`strongroom quarantine`)
# Failures that say nothing about the body being processed: retried as they are, never isolated.
# (A race that persists after its retries is the body's: two bindings of one person in a batch.)
TRANSIENT = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError, ObjectStoreError)
AUDIT_STREAM = "audit"  # the archive's own records: access audit, completeness reports, certificates
AUDIT_KEY = "system:audit"
_STREAM_ID = re.compile(r"[A-Za-z0-9._-]{1,100}")
EVENT_COLUMNS = [c.name for c in events.columns if c.name not in ("id", "seq", "segment_id")]
# Typed columns filled from webhook values, with the longest value each may hold.
_BOUNDED = {c.name: c.type.length for c in events.columns
            if isinstance(c.type, sa.String) and c.type.length and c.name not in ("natural_key", "stream")}


def _storable(value: Any, limit: int) -> bool:
    """A string both databases store as given: short enough, no NUL, valid UTF-8 (no lone surrogate)."""
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def stream_for(change_value: dict[str, Any], entry_id: Any) -> str:
    """A phone number's stream, or ``waba-<id>`` for account-level fields."""
    metadata = change_value.get("metadata") if isinstance(change_value, dict) else None
    pnid = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
    candidate = str(pnid) if pnid else (f"waba-{entry_id}" if entry_id else "")
    return candidate if _STREAM_ID.fullmatch(candidate) else UNROUTED


class EventBuilder:
    """Collects the events (and media jobs) of one body; encrypts content as each event is added.

    Also used outside normalisation (reconciliation, media, reports) to append system events.
    """

    def __init__(self, keyring: KeyRing, inbox_id: int | None, body_sha: str | None, received_at: datetime,
                 identities: IdentityBook | None = None) -> None:
        self.keyring = keyring
        self.identities = identities
        self.inbox_id = inbox_id
        self.body_sha = body_sha
        self.received_at = received_at
        self.evidence = ""  # natural key of the change being typed (why an identity was bound)
        self.rows: list[dict[str, Any]] = []
        self.media_jobs: list[dict[str, Any]] = []

    def person(self, phone: Any, user_id: Any, at: datetime | None) -> Person:
        """A WhatsApp user known by phone and/or BSUID at `at`: blind index, subject, key ids."""
        ids = [(ns, self.keyring.blind_index(ns, str(v)), str(v))
               for ns, v in (("wa", phone), ("bsuid", user_id)) if v]
        if not ids:
            return Person(None, None, [])
        if self.identities is None:
            raise RuntimeError("this builder resolves no people (no identity book)")
        subjects = self.identities.subjects(ids, to_us(at or self.received_at), self.evidence)
        return Person(ids[0][1], subjects[0], [subject_key_id(s) for s in subjects])

    def rebind(self, namespace: str, old: str, new: str, at: datetime | None, evidence: str) -> None:
        assert self.identities is not None
        self.identities.rebind(namespace, (self.keyring.blind_index(namespace, old), old),
                               (self.keyring.blind_index(namespace, new), new), to_us(at or self.received_at),
                               evidence)

    def blind(self, phone: Any) -> str | None:
        return self.keyring.blind_index("wa", str(phone)) if phone else None

    def add(self, stream: str, natural_key: str, kind: str, content: bytes, key_ids: list[str], **cols: Any) -> None:
        for name, limit in _BOUNDED.items():
            value = cols.get(name)
            if value is not None and not _storable(value, limit):
                # Never fail a batch over an odd value: the raw JSON keeps it; the column does not.
                cols[name] = None
                cols["modelled"] = False
        key_ids = sorted(set(key_ids)) or [f"biz:{stream}"]
        try:
            nonce, ciphertext = self.keyring.seal_content(stream, natural_key, key_ids, content)
        except KeyDestroyedError:
            # About someone who was erased (a late delivery from before their erasure): the
            # event is recorded, its content is not kept — erasure is not undone by a retry.
            nonce, ciphertext = None, None
            cols["modelled"] = False
        row = dict.fromkeys(EVENT_COLUMNS)
        row.update(cols)
        row.update(
            stream=stream, natural_key=natural_key, kind=kind, inbox_id=self.inbox_id,
            received_at=self.received_at, envelope_sha256=self.body_sha,
            subject_key_id=",".join(key_ids), nonce=nonce, content=ciphertext,
            modelled=cols.get("modelled", True),
        )
        self.rows.append(row)

    def media(self, stream: str, media_id: str, wamid: Any, message_key: str, key_ids: list[str],
              obj: dict[str, Any], message_time: datetime | None) -> None:
        """Queue an attachment for the media fetcher (stored with this batch's events)."""
        sha, url, mime = obj.get("sha256"), obj.get("url"), obj.get("mime_type")
        self.media_jobs.append({
            "stream": stream, "media_id": media_id[:128], "wamid": wamid if isinstance(wamid, str) else None,
            "message_key": message_key, "subject_key_id": ",".join(sorted(set(key_ids)) or [f"biz:{stream}"]),
            "meta_sha256": sha if isinstance(sha, str) and len(sha) <= 128 else None,
            "url": url if isinstance(url, str) and len(url) <= 2048 else None,
            "mime_type": mime if isinstance(mime, str) and len(mime) <= 128 else None,
            "message_time": message_time, "state": "pending", "attempts": 0,
            "next_attempt_at": self.received_at, "created_at": self.received_at, "updated_at": self.received_at,
        })

    def seal_identity_changes(self, stream: str) -> None:
        """One sealed `identity` record per binding made or ended (the mapping's evidence)."""
        if self.identities is None:
            return
        for ch in self.identities.drain():
            b = ch.binding
            start, end = from_us(b.valid_from), from_us(b.valid_to)
            nk = f"identity:{b.namespace}:{b.blind_index}:{b.valid_from}:{ch.action}"
            if ch.action == "ended":
                nk += f":{b.valid_to}"
            body = {"action": ch.action, "namespace": b.namespace, "identifier": ch.identifier,
                    "subject": b.subject, "valid_from": start.isoformat() if start else None,
                    "valid_to": end.isoformat() if end else None, "evidence": b.evidence}
            self.add(stream, nk, "identity", canonical_json(body), [subject_key_id(b.subject)],
                     conversation=b.subject, sender=b.blind_index, type=b.namespace, status=ch.action,
                     event_time=(end if ch.action == "ended" else start) or self.received_at)


@contextmanager
def new_people(keyring: KeyRing, identities: IdentityBook) -> Iterator[None]:
    """Build a batch that may create data keys and identity bindings in memory only; the
    caller stores them with `store_people` in the transaction that stores the batch's events."""
    identities.begin()
    try:
        with keyring.deferred():
            yield
    except BaseException:
        identities.discard()
        raise


def store_people(conn: sa.Connection, keyring: KeyRing, identities: IdentityBook) -> None:
    """New subjects' keys and identity bindings, committed with their first events.

    Raises:
        RaceError: another process created the same key or binding first (see `retry_on_race`).
    """
    keyring.store_new(conn)
    identities.store(conn)


def retry_on_race(build_and_store: Callable[[], T]) -> T:
    """Run a build-and-store once more when another process won a race on a new key or binding
    (the second build reads what they stored)."""
    try:
        return build_and_store()
    except RaceError:
        return build_and_store()


def system_builder(keyring: KeyRing, now: datetime | None = None) -> EventBuilder:
    """A builder for events the archive writes itself (no inbox body behind them)."""
    return EventBuilder(keyring, None, None, now or utcnow())


def append_audit(engine: sa.Engine, keyring: KeyRing, kind: str, action: str, actor: str, details: dict[str, Any],
                 now: datetime | None = None) -> str:
    """Append one event to the archive's own `audit` stream (sealed with the next sealing run).
    Content is encrypted under the audit key: details can name a person. Returns its natural key."""
    natural_key = f"{kind}:{ULID()}"
    b = system_builder(keyring, now)
    body = canonical_json({"kind": kind, "action": action, "actor": actor, "at": b.received_at.isoformat(),
                           "details": details})
    b.add(AUDIT_STREAM, natural_key, kind, body, [AUDIT_KEY], type=action, event_time=b.received_at)
    with engine.begin() as conn:
        append_events(conn, b)
    return natural_key


def bind_streams(conn: sa.Connection, builders: Sequence[EventBuilder]) -> None:
    """Bind each number a signed webhook names to the WABA it names it under (`entry[].id`), once.

    Meta's signature over the body is the evidence; a later webhook naming the number under
    another WABA does not move it (that needs an administrator) and is logged."""
    claims = {(r["stream"], r["tenant"]): b.inbox_id for b in builders if b.inbox_id is not None for r in b.rows
              if r.get("tenant") and r["tenant"].isascii() and r["tenant"].isdigit()  # a WABA id
              and r["stream"] not in (AUDIT_STREAM, UNROUTED)}
    for (stream, tenant), inbox_id in sorted(claims.items()):
        if bind_stream(conn, stream, tenant, f"webhook:{inbox_id}") != tenant:
            log.warning("stream.tenant_conflict", stream=stream, inbox_id=inbox_id)


def append_events(conn: sa.Connection, *builders: EventBuilder) -> None:
    """Insert the events (and media jobs) of `builders` on `conn`'s transaction, idempotently."""
    insert_ignore(conn, events, [ev for b in builders for ev in b.rows])
    insert_ignore(conn, media, [job for b in builders for job in b.media_jobs])


def unparsed(keyring: KeyRing, body: bytes, inbox_id: int | None, received_at: datetime) -> EventBuilder:
    """The whole body as one flagged record on the `unrouted` stream."""
    body_sha = hashlib.sha256(body).hexdigest()
    b = EventBuilder(keyring, inbox_id, body_sha, received_at)
    b.add(UNROUTED, f"unparsed:{body_sha}", "unparsed", body, ["system:unrouted"], modelled=False)
    return b


def build_events(keyring: KeyRing, identities: IdentityBook, body: bytes, inbox_id: int | None,
                 received_at: datetime) -> EventBuilder:
    """Every event (and media job) of one raw body, content already encrypted."""
    body_sha = hashlib.sha256(body).hexdigest()
    b = EventBuilder(keyring, inbox_id, body_sha, received_at, identities)
    try:
        text = body.decode("utf-8")
        doc = json.loads(text)
        spans = change_spans(text)
        entries = doc["entry"]
    except (UnicodeDecodeError, json.JSONDecodeError, SpanError, KeyError, TypeError, RecursionError):
        return unparsed(keyring, body, inbox_id, received_at)

    order: list[dict[str, str]] = []  # every change in document order, with where it is sealed
    for sp in spans:
        entry = entries[sp.entry_index]
        change = entry["changes"][sp.change_index]
        raw = text[sp.start : sp.end].encode("utf-8")
        value = obj(obj(change).get("value"))
        field = obj(change).get("field")
        tenant = str(entry.get("id")) if entry.get("id") is not None else None
        stream = stream_for(value, tenant)
        change_key = hashlib.sha256(raw).hexdigest()
        typed_from, media_from = len(b.rows), len(b.media_jobs)
        handler = HANDLERS.get(field) if isinstance(field, str) else None
        b.evidence = f"change:{change_key}"
        try:
            change_ctx = Change(stream, tenant, str(field), value, change_key, parse_unix(entry.get("time")))
            modelled = handler(b, change_ctx) if handler else False
            typed = b.rows[typed_from:]
        except (AttributeError, TypeError, ValueError):
            # A shape we do not understand: drop the partial typing, keep the exact change.
            del b.rows[typed_from:], b.media_jobs[media_from:]
            modelled, typed = False, []
        # The raw change is about every person in it: the typed events' subjects (resolved at
        # their own times), or everyone it mentions when nothing could be typed.
        subjects = {k for r in typed for k in r["subject_key_id"].split(",") if k.startswith("subj:")}
        if not typed:
            subjects.update(subjects_of(b, value))
        b.seal_identity_changes(stream)
        b.add(
            stream, f"change:{change_key}", "change", raw, sorted(subjects),
            tenant=tenant, field=str(field) if field is not None else None,
            event_time=parse_unix(entry.get("time")), modelled=modelled,
        )
        order.append({"stream": stream, "natural_key": f"change:{change_key}"})

    skeleton = canonical_json({"body_sha256": body_sha, "pieces": split_pieces(text, spans), "changes": order})
    for stream in sorted({c["stream"] for c in order}) or [UNROUTED]:
        b.add(stream, f"envelope:{body_sha}", "envelope", skeleton, [], modelled=bool(spans))
    return b


class Normalizer:
    """Turns pending inbox bodies into events. Idempotent; safe to run in several processes."""

    def __init__(self, engine: sa.Engine, keyring: KeyRing, inbox_reader: Inbox) -> None:
        self.engine = engine
        self.keyring = keyring
        self.inbox_reader = inbox_reader
        self.identities = IdentityBook(engine)

    def run_once(self, limit: int = 200, max_bytes: int = 4 * 1024 * 1024) -> int:
        """Normalise up to `limit` pending bodies (at most `max_bytes` of them, but at least one).
        Returns how many were processed.

        Events are built before the write transaction and new data keys are created in memory,
        then stored in the same transaction as the events, so a single-writer database
        (SQLite) never waits on itself and no ciphertext is ever committed without its key.
        Two normalisers racing on the same body insert the same natural keys; the second
        insert is ignored (and a lost race on a new key is retried with the stored key).
        """
        with self.engine.connect() as conn:
            sizes = conn.execute(sa.select(inbox.c.id, inbox.c.size).where(inbox.c.state == "pending")
                                 .order_by(inbox.c.id).limit(limit)).all()
            total, ids = 0, list[int]()
            for r in sizes:  # a history import is thousands of messages per body: bound the batch
                if ids and total + r.size > max_bytes:
                    break
                total += r.size
                ids.append(r.id)
            if not ids:
                return 0
            rows = conn.execute(
                sa.select(inbox.c.id, inbox.c.body_sha256, inbox.c.key_id, inbox.c.nonce,
                          inbox.c.ciphertext, inbox.c.received_at)
                .where(inbox.c.id.in_(ids), inbox.c.state == "pending").order_by(inbox.c.id)
            ).all()
        if not rows:
            return 0
        try:
            self._normalize_retrying(rows)
        except TRANSIENT:
            raise  # the database or store is away: nothing is wrong with the bodies, retry later
        except Exception as e:
            # One body must never wedge every body behind it: retry one by one; a body that still
            # fails is kept whole, as an `unparsed` record; one that cannot even be kept so (its
            # stored ciphertext does not decrypt, say) is quarantined: left raw in the inbox,
            # counted and reported, out of everyone else's way.
            log.error("normalize.batch_refused", error=type(e).__name__, bodies=len(rows))
            for row in rows:
                try:
                    self._normalize_retrying([row])
                except TRANSIENT:
                    raise
                except Exception as e1:
                    log.error("normalize.body_kept_unparsed", inbox_id=row.id, error=type(e1).__name__)
                    try:
                        self._normalize_retrying([row], whole=True)
                    except TRANSIENT:
                        raise
                    except Exception as e2:
                        self.quarantine(row.id, type(e2).__name__)
        return len(rows)

    def quarantine(self, inbox_id: int, reason: str) -> None:
        """Set a body aside, raw and encrypted as received, so the rest of the inbox moves on."""
        log.error("normalize.quarantined", inbox_id=inbox_id, error=reason)
        with self.engine.begin() as conn:
            conn.execute(sa.update(inbox).where(inbox.c.id == inbox_id, inbox.c.state == "pending")
                         .values(state=QUARANTINED, normalized_at=utcnow()))

    def _normalize_retrying(self, rows: Sequence[Row], whole: bool = False) -> None:
        retry_on_race(lambda: self._normalize(rows, whole))

    def _build_one(self, row: Row, whole: bool = False) -> EventBuilder:
        body = self.inbox_reader.read_body(row)
        received_at = as_utc(row.received_at)
        assert received_at is not None
        if whole:
            return unparsed(self.keyring, body, row.id, received_at)
        try:
            return build_events(self.keyring, self.identities, body, row.id, received_at)
        except (AttributeError, TypeError, ValueError, KeyError, IndexError, RecursionError) as e:
            # Whatever went wrong, the signed body is archived whole and flagged, never dropped.
            log.error("normalize.unparseable", inbox_id=row.id, error=type(e).__name__)
            return unparsed(self.keyring, body, row.id, received_at)

    def _normalize(self, rows: Sequence[Row], whole: bool = False) -> None:
        with new_people(self.keyring, self.identities):
            built = [self._build_one(row, whole) for row in rows]
            failpoints.hit("normalize.before_commit")
            with self.engine.begin() as conn:
                store_people(conn, self.keyring, self.identities)
                bind_streams(conn, built)
                append_events(conn, *built)
                conn.execute(
                    sa.update(inbox).where(inbox.c.id.in_([r.id for r in rows]), inbox.c.state == "pending")
                    .values(state="normalized", normalized_at=utcnow())
                )
