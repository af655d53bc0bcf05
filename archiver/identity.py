"""Identity over time: which data subject a phone number or BSUID meant at a given instant.

WhatsApp reassigns numbers. A subject (a random id owning one data key) is bound to a
blind-indexed identifier — ``wa`` (phone digits) or ``bsuid`` (business-scoped user id) — over a
half-open interval ``[valid_from, valid_to)`` of unix microseconds. Intervals of one identifier
never overlap, so a message is attributed by (identifier, message time), and a number that
changed hands never pulls an earlier owner's messages onto the new owner:

- first sight of an identifier binds it to a new subject over the whole free interval around
  that instant (open-ended both ways when nothing else is known — history imports reach back
  six months before live capture began);
- a system ``user_changed_number`` at t ends the old number's binding at t and binds the new
  number to the same subject from t (cutting short whoever held the new number before);
  ``user_changed_user_id`` does the same for BSUIDs;
- a message carrying both a phone and a BSUID binds whichever is unknown to the known subject.

Bindings are created in memory while a batch is built and stored in the same transaction as
the events that use them (like data keys); each binding change is also returned so the
normaliser seals it as an ``identity`` record — the mapping is evidence, not just an index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlalchemy as sa
from ulid import ULID

from archiver.db import TIME_MAX, TIME_MIN, identities
from archiver.errors import RaceError
from archiver.sqlutil import insert_ignore, utcnow


class IdentityRaceError(RaceError):
    """Another process changed the same identity bindings first; rebuild the batch."""


def to_us(at: datetime | None) -> int:
    """Unix microseconds of `at` (now when unknown)."""
    at = at or datetime.now(UTC)
    return int(at.timestamp()) * 1_000_000 + at.microsecond


def from_us(us: int) -> datetime | None:
    """The datetime of a bound, None for an open end."""
    if us in (TIME_MIN, TIME_MAX):
        return None
    return datetime.fromtimestamp(us // 1_000_000, UTC).replace(microsecond=us % 1_000_000)


def subject_key_id(subject: str) -> str:
    return "subj:" + subject


@dataclass(slots=True)
class Binding:
    namespace: str
    blind_index: str
    subject: str
    valid_from: int
    valid_to: int
    evidence: str
    id: int | None = None
    stored_to: int | None = field(default=None, repr=False)  # valid_to as stored (for updates)

    def covers(self, t: int) -> bool:
        return self.valid_from <= t < self.valid_to


@dataclass(frozen=True, slots=True)
class BindingChange:
    action: str  # "bound" | "ended"
    binding: Binding
    identifier: str  # the plain identifier, for the (encrypted) identity record only


class IdentityBook:
    """Time-bounded identifier → subject bindings, with a per-batch cache.

    Not thread-safe: one book per normaliser; `begin` starts a batch (drops the cache so
    bindings changed by other processes are re-read), `store` persists what the batch changed.
    """

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._cache: dict[tuple[str, str], list[Binding]] = {}
        self._changes: list[BindingChange] = []

    def begin(self) -> None:
        self._cache.clear()
        self._changes.clear()

    def _bindings(self, ns: str, bi: str) -> list[Binding]:
        found = self._cache.get((ns, bi))
        if found is None:
            with self.engine.connect() as conn:
                rows = conn.execute(sa.select(identities).where(
                    identities.c.namespace == ns, identities.c.blind_index == bi).order_by(identities.c.valid_from))
                found = [Binding(ns, bi, r.subject, r.valid_from, r.valid_to, r.evidence, r.id, r.valid_to)
                         for r in rows]
            self._cache[(ns, bi)] = found
        return found

    def lookup(self, ns: str, bi: str, t: int) -> Binding | None:
        return next((b for b in self._bindings(ns, bi) if b.covers(t)), None)

    def holders(self, ns: str, bi: str, start: datetime | None = None, end: datetime | None = None) -> list[str]:
        """Every subject the identifier meant at some time in [start, end) (all time when open),
        first holder first: a reassigned number names its previous owners too."""
        lo = to_us(start) if start else TIME_MIN
        hi = to_us(end) if end else TIME_MAX
        found: list[str] = []
        for b in self._bindings(ns, bi):
            if b.valid_from < hi and b.valid_to > lo and b.subject not in found:
                found.append(b.subject)
        return found

    def _bind(self, ns: str, bi: str, identifier: str, subject: str, t: int, evidence: str,
              start: int | None = None) -> Binding:
        """Bind over the free interval around t (from `start` when given)."""
        bindings = self._bindings(ns, bi)
        lo = max((b.valid_to for b in bindings if b.valid_to <= t), default=TIME_MIN)
        hi = min((b.valid_from for b in bindings if b.valid_from > t), default=TIME_MAX)
        b = Binding(ns, bi, subject, lo if start is None else max(lo, start), hi, evidence)
        bindings.append(b)
        bindings.sort(key=lambda x: x.valid_from)
        self._changes.append(BindingChange("bound", b, identifier))
        return b

    def _end(self, b: Binding, t: int, identifier: str) -> None:
        if b.valid_to > t:
            b.valid_to = t
            self._changes.append(BindingChange("ended", b, identifier))

    def subjects(self, ids: list[tuple[str, str, str]], t: int, evidence: str) -> list[str]:
        """Subjects of one person known by several identifiers ``(ns, blind_index, plain)`` at t.

        Unknown identifiers are bound to the subject of a known one (or to a new subject).
        Two known identifiers bound to different subjects both count: the record is then
        protected by both subjects' keys, so erasing either makes it unreadable.
        """
        known = [self.lookup(ns, bi, t) for ns, bi, _ in ids]
        subjects = list(dict.fromkeys(b.subject for b in known if b is not None))
        subject = subjects[0] if subjects else str(ULID())
        for (ns, bi, plain), b in zip(ids, known, strict=True):
            if b is None:
                self._bind(ns, bi, plain, subject, t, evidence)
        return subjects or [subject]

    def rebind(self, ns: str, old: tuple[str, str], new: tuple[str, str], t: int, evidence: str) -> str:
        """The person known as `old` (blind index, plain) is known as `new` from t on.

        Idempotent: a second delivery of the same change finds the bindings already cut.
        Returns the person's subject.
        """
        (old_bi, old_plain), (new_bi, new_plain) = old, new
        before = self.lookup(ns, old_bi, t - 1)
        subject = before.subject if before else self.subjects([(ns, old_bi, old_plain)], t - 1, evidence)[0]
        current_old = self.lookup(ns, old_bi, t)
        if old_bi != new_bi and current_old is not None and current_old.subject == subject:
            self._end(current_old, t, old_plain)
        holder = self.lookup(ns, new_bi, t)
        if holder is None:
            self._bind(ns, new_bi, new_plain, subject, t, evidence, start=t)
        elif holder.subject != subject:
            until = holder.valid_to
            self._end(holder, t, new_plain)  # the number's previous owner stops here
            b = self._bind(ns, new_bi, new_plain, subject, t, evidence, start=t)
            b.valid_to = min(b.valid_to, until)
        return subject

    def drain(self) -> list[BindingChange]:
        """Binding changes since the last drain (for sealing as identity records)."""
        out, self._changes = self._changes, []
        return out

    def store(self, conn: sa.Connection) -> None:
        """Persist this batch's bindings on `conn`'s transaction.

        Raises:
            IdentityRaceError: another process bound or cut the same identifiers first.
        """
        pending = [b for bs in self._cache.values() for b in bs]
        new = [b for b in pending if b.id is None]
        now = utcnow()
        if new:
            insert_ignore(conn, identities, [
                {"namespace": b.namespace, "blind_index": b.blind_index, "subject": b.subject,
                 "valid_from": b.valid_from, "valid_to": b.valid_to, "evidence": b.evidence, "created_at": now}
                for b in new])
            for b in new:
                row = conn.execute(sa.select(identities.c.id, identities.c.subject, identities.c.valid_to).where(
                    identities.c.namespace == b.namespace, identities.c.blind_index == b.blind_index,
                    identities.c.valid_from == b.valid_from)).one()
                if row.subject != b.subject or row.valid_to != b.valid_to:
                    raise IdentityRaceError(f"identity binding {b.namespace} created concurrently")
                b.id, b.stored_to = row.id, row.valid_to
        for b in pending:
            if b.stored_to is not None and b.valid_to != b.stored_to:
                done = conn.execute(sa.update(identities).where(
                    identities.c.id == b.id, identities.c.valid_to == b.stored_to).values(valid_to=b.valid_to))
                if done.rowcount != 1:
                    raise IdentityRaceError("identity binding ended concurrently")
                b.stored_to = b.valid_to

    def discard(self) -> None:
        """Forget unstored changes (the batch's transaction rolled back)."""
        self.begin()

    def at(self, ns: str, bi: str, when: datetime | None = None) -> str | None:
        """The subject an identifier meant at `when` (now by default), reading committed state."""
        with self.engine.connect() as conn:
            t = to_us(when)
            row = conn.execute(sa.select(identities.c.subject).where(
                identities.c.namespace == ns, identities.c.blind_index == bi,
                identities.c.valid_from <= t, identities.c.valid_to > t)).first()
        return row.subject if row else None
