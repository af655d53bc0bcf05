"""Legal holds: freeze everything a matter needs, in the object store itself (R-5).

A hold names a matter and a scope — numbers (streams), contacts (phone numbers, resolved to
every data subject that held the number inside the date range), conversations (subject ids),
a date range over event time, and optionally a saved query (a DuckDB WHERE clause over the
`records` view). Placing it sets the S3 legal hold on every object holding an in-scope record:
the segments, and the media of in-scope messages. While any active hold covers an object, the
store itself refuses to delete it, whatever its retain-until; retention runs skip it and
erasure of a subject in scope is refused (GDPR Art 17(3)(e)).

Holds live in SQL (they survive restarts), are re-applied to objects sealed later (`refresh`,
run by every retention run), and release is explicit: an object's legal hold is lifted only
when no other active hold still covers it. Placing, refreshing and releasing are sealed
events on the audit stream.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from ulid import ULID

from archiver.db import TIME_MAX, TIME_MIN, events, identities, media, metadata, segments
from archiver.errors import InvalidInput, NotFound, StateConflict, Unavailable
from archiver.identity import to_us
from archiver.keys import KeyRing
from archiver.normalize import append_audit
from archiver.objectstore import ObjectStore
from archiver.sqlutil import as_utc, utcnow

Ts = sa.DateTime(timezone=True)

holds = sa.Table(
    "holds",
    metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("matter", sa.String(200), nullable=False),
    sa.Column("scope", sa.Text, nullable=False),
    sa.Column("placed_by", sa.String(200), nullable=False),
    sa.Column("placed_at", Ts, nullable=False),
    sa.Column("released_at", Ts),
    sa.Column("released_by", sa.String(200)),
    sa.Column("release_reason", sa.String(1000)),
)

hold_objects = sa.Table(
    "hold_objects",
    metadata,
    sa.Column("hold_id", sa.String(26), sa.ForeignKey("holds.id"), primary_key=True),
    sa.Column("object_key", sa.String(512), primary_key=True),
    sa.Column("version_id", sa.String(128)),
    sa.Column("applied_at", Ts, nullable=False),
)


class HoldError(InvalidInput):
    """A hold request that cannot be carried out as asked."""


class HoldNotFound(NotFound, HoldError):
    """No hold with that id."""


class HoldReleased(StateConflict, HoldError):
    """The hold was released already."""


@dataclass(frozen=True)
class Scope:
    streams: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)  # contacts; kept blind-indexed once stored
    subjects: list[str] = field(default_factory=list)  # conversations (subject ids)
    start: str | None = None  # ISO-8601, inclusive
    end: str | None = None  # ISO-8601, exclusive
    query: str | None = None  # DuckDB WHERE clause over `records`

    def __post_init__(self) -> None:
        if not (self.streams or self.phones or self.subjects or self.start or self.end or self.query):
            raise HoldError("a hold needs a scope: numbers, contacts, conversations, a date range or a query")
        for name, t in (("from", self.start), ("to", self.end)):
            if t is not None:
                try:
                    datetime.fromisoformat(t)
                except ValueError as e:
                    raise HoldError(f"{name}: not an ISO-8601 time: {t[:40]!r}") from e

    def window(self) -> tuple[datetime | None, datetime | None]:
        return (datetime.fromisoformat(self.start) if self.start else None,
                datetime.fromisoformat(self.end) if self.end else None)


@dataclass
class Hold:
    id: str
    matter: str
    scope: dict[str, Any]
    placed_by: str
    placed_at: datetime
    released_at: datetime | None
    objects: list[str]


QueryRunner = Callable[[str], list[tuple[str, int]]]  # WHERE clause -> (stream, seq) of matching records


class Holds:
    def __init__(self, engine: sa.Engine, store: ObjectStore, keyring: KeyRing,
                 query: QueryRunner | None = None) -> None:
        self.engine = engine
        self.store = store
        self.keyring = keyring
        self.query = query

    # -- scope → objects ----------------------------------------------------------------------

    def _stored_scope(self, scope: Scope) -> dict[str, Any]:
        """The scope as stored: phone numbers only as blind indexes (R-35)."""
        doc = asdict(scope)
        doc["phones"] = [self.keyring.blind_index("wa", p) for p in scope.phones]
        return doc

    def _subjects(self, conn: sa.Connection, scope: dict[str, Any]) -> set[str]:
        """Every subject that held one of the scope's numbers at some time inside its window."""
        lo = to_us(datetime.fromisoformat(scope["start"])) if scope.get("start") else TIME_MIN
        hi = to_us(datetime.fromisoformat(scope["end"])) if scope.get("end") else TIME_MAX
        found = set(scope.get("subjects") or [])
        if scope.get("phones"):
            found |= set(conn.execute(sa.select(identities.c.subject).where(
                identities.c.namespace == "wa", identities.c.blind_index.in_(scope["phones"]),
                identities.c.valid_from < hi, identities.c.valid_to > lo)).scalars())
        return found

    def _conditions(self, conn: sa.Connection, scope: dict[str, Any]) -> list[Any]:
        """SQL conditions on `events` selecting the sealed records in scope (all dimensions ANDed)."""
        conds: list[Any] = [events.c.segment_id.is_not(None)]
        if scope.get("streams"):
            conds.append(events.c.stream.in_(scope["streams"]))
        if scope.get("phones") or scope.get("subjects"):
            conds.append(events.c.conversation.in_(sorted(self._subjects(conn, scope))))
        lo, hi = scope.get("start"), scope.get("end")
        if lo:
            conds.append(events.c.event_time >= datetime.fromisoformat(lo))
        if hi:
            conds.append(events.c.event_time < datetime.fromisoformat(hi))
        if scope.get("query"):
            if self.query is None:
                raise HoldError("saved-query holds need the query engine")
            by_stream: dict[str, list[int]] = {}
            for stream, seq in self.query(scope["query"]):
                by_stream.setdefault(stream, []).append(seq)
            conds.append(sa.or_(sa.false(), *(sa.and_(events.c.stream == s, events.c.seq.in_(q))
                                              for s, q in by_stream.items())))
        return conds

    def objects_in_scope(self, scope: dict[str, Any]) -> list[tuple[str, str | None]]:
        """(object key, version id) of every live segment and media object with an in-scope record."""
        with self.engine.connect() as conn:
            conds = self._conditions(conn, scope)
            in_scope = sa.select(events.c.segment_id, events.c.stream, events.c.natural_key).where(*conds).subquery()
            segs = conn.execute(sa.select(segments.c.object_key, segments.c.version_id).distinct().where(
                segments.c.id.in_(sa.select(in_scope.c.segment_id)), segments.c.disposed_at.is_(None))).all()
            meds = conn.execute(sa.select(media.c.object_key, media.c.version_id).distinct().join(
                in_scope, sa.and_(media.c.stream == in_scope.c.stream, media.c.message_key == in_scope.c.natural_key))
                .where(media.c.state == "stored", media.c.disposed_at.is_(None))).all()
        return sorted({(r.object_key, r.version_id) for r in [*segs, *meds]})

    # -- place / refresh / release ------------------------------------------------------------

    def place(self, matter: str, scope: Scope, actor: str, now: datetime | None = None) -> Hold:
        now = now or utcnow()
        hold_id = str(ULID())
        stored = self._stored_scope(scope)
        self.objects_in_scope(stored)  # a scope that cannot be evaluated (a bad saved query) is refused now
        with self.engine.begin() as conn:
            conn.execute(sa.insert(holds).values(id=hold_id, matter=matter, scope=json.dumps(stored, sort_keys=True),
                                                 placed_by=actor, placed_at=now))
        try:
            applied = self._apply(hold_id, stored, now)
        except Exception as e:
            # All or nothing: a hold that reached only some objects is taken back (objects another
            # hold covers stay held) and the failure is on the audit stream; the caller tries again.
            self.release(hold_id, actor, f"placement failed ({type(e).__name__}): nothing is held by it", now)
            raise Unavailable("the hold could not be applied to every object in scope, so it was not placed: "
                              "try again") from e
        append_audit(self.engine, self.keyring, "hold", "placed", actor,
                     {"hold_id": hold_id, "matter": matter, "scope": stored, "objects": applied}, now)
        return self.get(hold_id)

    def _apply(self, hold_id: str, scope: dict[str, Any], now: datetime) -> list[str]:
        with self.engine.connect() as conn:
            done = set(conn.execute(sa.select(hold_objects.c.object_key).where(hold_objects.c.hold_id == hold_id))
                       .scalars())
        new = [(k, v) for k, v in self.objects_in_scope(scope) if k not in done]
        for key, version in new:
            self.store.set_legal_hold(key, version, True)  # the store enforces it from here on
            with self.engine.begin() as conn:
                conn.execute(sa.insert(hold_objects).values(hold_id=hold_id, object_key=key, version_id=version,
                                                            applied_at=now))
        return [k for k, _ in new]

    def refresh(self, actor: str = "system:retention", now: datetime | None = None) -> dict[str, list[str]]:
        """Apply every active hold to objects sealed since it was placed. Returns new keys per hold."""
        now = now or utcnow()
        added = {}
        for h in self.active():
            new = self._apply(h.id, h.scope, now)
            if new:
                added[h.id] = new
                append_audit(self.engine, self.keyring, "hold", "extended", actor,
                             {"hold_id": h.id, "matter": h.matter, "objects": new}, now)
        return added

    def release(self, hold_id: str, actor: str, reason: str, now: datetime | None = None) -> list[str]:
        """Release a hold; lift the store's legal hold on objects no other active hold covers."""
        now = now or utcnow()
        hold = self.get(hold_id)
        if hold.released_at is not None:
            raise HoldReleased(f"hold {hold_id} was already released at {hold.released_at}")
        if not reason.strip():
            raise HoldError("releasing a hold needs a reason")
        with self.engine.begin() as conn:
            conn.execute(sa.update(holds).where(holds.c.id == hold_id).values(
                released_at=now, released_by=actor, release_reason=reason))
            still = set(conn.execute(sa.select(hold_objects.c.object_key).join(holds).where(
                holds.c.released_at.is_(None))).scalars())
            mine = conn.execute(sa.select(hold_objects.c.object_key, hold_objects.c.version_id)
                                .where(hold_objects.c.hold_id == hold_id)).all()
        lifted = []
        for r in mine:
            if r.object_key not in still:
                self.store.set_legal_hold(r.object_key, r.version_id, False)
                lifted.append(r.object_key)
        append_audit(self.engine, self.keyring, "hold", "released", actor,
                     {"hold_id": hold_id, "matter": hold.matter, "reason": reason, "lifted": lifted,
                      "still_held_by_other_holds": [r.object_key for r in mine if r.object_key in still]}, now)
        return lifted

    # -- reading ------------------------------------------------------------------------------

    def get(self, hold_id: str) -> Hold:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(holds).where(holds.c.id == hold_id)).first()
            if row is None:
                raise HoldNotFound(f"no hold {hold_id}")
            keys = conn.execute(sa.select(hold_objects.c.object_key).where(hold_objects.c.hold_id == hold_id)
                                .order_by(hold_objects.c.object_key)).scalars().all()
        return Hold(row.id, row.matter, json.loads(row.scope), row.placed_by, as_utc(row.placed_at),
                    as_utc(row.released_at), list(keys))

    def all(self, include_released: bool = True) -> list[Hold]:
        with self.engine.connect() as conn:
            q = sa.select(holds.c.id).order_by(holds.c.placed_at)
            if not include_released:
                q = q.where(holds.c.released_at.is_(None))
            ids = conn.execute(q).scalars().all()
        return [self.get(i) for i in ids]

    def active(self) -> list[Hold]:
        return self.all(include_released=False)

    def held_keys(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(hold_objects.c.object_key).join(holds).where(
                holds.c.released_at.is_(None))).scalars())

    def holds_on_subject(self, subject: str) -> list[str]:
        """Active holds that need a record readable only with `subject`'s key (they block erasure).

        Record-level, not object-level: a hold on Alice's conversation keeps the segment it is in,
        but shredding Bob, whose records share that segment, takes nothing the matter needs."""
        blocking = []
        for h in self.active():
            with self.engine.connect() as conn:
                named = subject in self._subjects(conn, h.scope)
                hit = named or conn.execute(sa.select(events.c.id).where(
                    *self._conditions(conn, h.scope), events.c.subject_key_id.like(f"%subj:{subject}%")).limit(1)
                ).first() is not None
            if hit:
                blocking.append(h.id)
        return blocking
