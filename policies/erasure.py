"""GDPR erasure (Art 17) by crypto-shredding, with a decision record for every request (R-33, R-34).

A request names a person by phone number, BSUID or subject id. Identity over time decides who
that is: a phone number means whoever holds it *now*, so a reassigned number's new owner can
never erase the previous owner's records (or the other way round).

The decision is sealed on the audit stream either way:

- **refused** under Art 17(3)(e) when an active legal hold covers any of the subject's records
  (hold ids listed), or under Art 17(3)(b) when a statutory retention period still runs on an
  object holding their records (the governing rule and the latest retention end are listed).
  The subject is then *restricted*: `process_restricted` (run by every retention run) shreds
  them automatically once nothing blocks any more.
- **granted**: the subject's data key is destroyed (the wrapped copy is overwritten with NULL;
  the KEK never saw a plaintext backup), and a key-destruction certificate signed with the
  archive's key is stored WORM at ``certificates/erasure/<id>.json`` and sealed. Every record
  and attachment about the subject — alone or with others — becomes unreadable; the hash chain
  and Merkle proofs still verify because they cover ciphertext.

Regimes marked ``default``, ``GDPR`` (the storage-limitation tag) or ``GDPR-max`` are not statutory
obligations and never block.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from ulid import ULID

from archiver.db import data_keys, events, identities, media, metadata, segments
from archiver.errors import InvalidInput, KeyDestroyedError
from archiver.identity import IdentityBook, subject_key_id, to_us
from archiver.media import open_media
from archiver.normalize import append_audit
from archiver.sqlutil import as_utc, utcnow
from policies.disposition import Certifier
from policies.holds import Holds

Ts = sa.DateTime(timezone=True)
def statutory(rule: str | None) -> bool:
    """Does a segment's retention rule (`v<schedule version>:<regime>`) oblige us to keep it?

    Every regime does but GDPR's maximum, and the default period of a schedule the firm stored
    (it said so). The built-in default (`v0:default`: no schedule stored yet) counts as statutory:
    a broker-dealer that has not said otherwise must keep its records (an adopted orphan's
    "as stored" counts too)."""
    if not rule:
        return False
    version, _, regime = rule.rpartition(":")
    if regime in ("GDPR", "GDPR-max"):  # a ceiling on keeping, not an obligation to keep
        return False
    if regime == "default":
        return version in ("", "v0")
    return True

erasures = sa.Table(
    "erasures",
    metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("subject", sa.String(40), nullable=False),
    sa.Column("requested_by", sa.String(200), nullable=False),
    sa.Column("requested_at", Ts, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # shredded | restricted | nothing_held
    sa.Column("decision", sa.Text, nullable=False),
    sa.Column("retention_end", Ts),
    sa.Column("shredded_at", Ts),
    sa.Index("ix_erasures_state", "state"),
)


class ErasureError(InvalidInput):
    """A request that names nobody we hold."""


@dataclass(frozen=True)
class Decision:
    request_id: str
    subject: str
    outcome: str  # granted | refused | nothing_held
    basis: list[dict[str, Any]]
    retention_end: datetime | None
    certificate_key: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "subject": self.subject, "outcome": self.outcome,
                "basis": self.basis, "retention_end": self.retention_end.isoformat() if self.retention_end else None,
                "certificate": self.certificate_key}


class Erasure:
    def __init__(self, certifier: Certifier, holds: Holds) -> None:
        self.engine, self.store, self.keyring = certifier.engine, certifier.store, certifier.keyring
        self.certifier = certifier
        self.holds = holds

    def subject_for(self, phone: str | None = None, bsuid: str | None = None, subject: str | None = None,
                    at: datetime | None = None) -> str:
        if subject:
            return subject
        book = IdentityBook(self.engine)
        for ns, value in (("wa", phone), ("bsuid", bsuid)):
            if value:
                found = book.at(ns, self.keyring.blind_index(ns, value), at)
                if found:
                    return found
        raise ErasureError("no data subject holds that identifier now; nothing is archived about them")

    def blockers(self, subject: str, now: datetime) -> tuple[list[dict[str, Any]], datetime | None]:
        """Why `subject` cannot be erased now (empty: nothing blocks) and when retention ends."""
        basis: list[dict[str, Any]] = []
        held = self.holds.holds_on_subject(subject)
        if held:
            basis.append({"article": "17(3)(e)", "reason": "legal hold (establishment, exercise or defence of "
                                                             "legal claims)", "holds": held})
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(segments.c.retention_rule, sa.func.max(segments.c.retain_until))
                                .where(segments.c.id.in_(sa.select(events.c.segment_id).where(
                                    events.c.subject_key_id.like(f"%{subject_key_id(subject)}%"))),
                                    segments.c.disposed_at.is_(None), segments.c.retain_until > now)
                                .group_by(segments.c.retention_rule)).all()
        kept = [(r[0], as_utc(r[1])) for r in rows if statutory(r[0])]
        end = max((t for _, t in kept if t is not None), default=None)
        if kept:
            reason = "a legal obligation to retain (statutory retention)"
            if any(rule.endswith(":default") for rule, _ in kept):
                reason += ("; the built-in period counts as statutory until a retention schedule says otherwise "
                           "(`strongroom retention set`)")
            basis.append({"article": "17(3)(b)", "reason": reason, "rules": sorted({r for r, _ in kept}),
                          "retention_end": end.isoformat() if end else None})
        return basis, end

    def request(self, actor: str, phone: str | None = None, bsuid: str | None = None, subject: str | None = None,
                now: datetime | None = None) -> Decision:
        now = now or utcnow()
        who = self.subject_for(phone, bsuid, subject, now)
        request_id = str(ULID())
        basis, end = self.blockers(who, now)
        if basis:
            decision = Decision(request_id, who, "refused", basis, end)
            state = "restricted"
        else:
            decision = Decision(request_id, who, "granted", [], None)
            state = "granted"
        with self.engine.begin() as conn:
            conn.execute(sa.insert(erasures).values(id=request_id, subject=who, requested_by=actor, requested_at=now,
                                                    state=state, decision=json.dumps(decision.as_dict()),
                                                    retention_end=end))
        append_audit(self.engine, self.keyring, "erasure_decision", decision.outcome, actor, decision.as_dict(), now)
        if state == "granted":
            decision = self._shred(request_id, who, actor, now, decision)
        return decision

    def _shred(self, request_id: str, subject: str, actor: str, now: datetime, decision: Decision) -> Decision:
        key_id = subject_key_id(subject)
        with self.engine.begin() as conn:
            wrapped_by = sorted(set(conn.execute(sa.select(data_keys.c.kek_id).where(
                data_keys.c.key_id == key_id, data_keys.c.wrapped.is_not(None))).scalars()))
            conn.execute(sa.update(data_keys).where(data_keys.c.key_id == key_id, data_keys.c.wrapped.is_not(None))
                         .values(wrapped=None, destroyed_at=now))
            # whatever this person sends from now on belongs to a new subject with a new key
            conn.execute(sa.update(identities).where(identities.c.subject == subject,
                                                     identities.c.valid_from <= to_us(now),
                                                     identities.c.valid_to > to_us(now)).values(valid_to=to_us(now)))
            n_records = conn.execute(sa.select(sa.func.count()).where(
                events.c.subject_key_id.like(f"%{key_id}%"))).scalar_one()
            n_media = conn.execute(sa.select(sa.func.count()).where(media.c.subject_key_id.like(f"%{key_id}%"))) \
                .scalar_one()
            bindings = conn.execute(sa.select(sa.func.count()).where(identities.c.subject == subject)).scalar_one()
        self.keyring.forget(key_id)
        body = {"format": "strongroom.key-destruction/1", "request_id": request_id, "subject": subject,
                "key_ids": [key_id], "destroyed_at": now.isoformat(), "actor": actor,
                "records_made_unreadable": n_records, "media_made_unreadable": n_media,
                "identity_bindings": bindings, "decision": decision.outcome,
                # the key is gone from the database now; from its backups once these KEK versions are
                "wrapped_by_kek": wrapped_by,
                "unrecoverable_from_backups": "once every KEK version listed is destroyed: by `strongroom keys "
                                              "rotate-kek` (sealed as keys.rotate_kek.finished naming it), or in "
                                              "the HSM or KMS that holds it"}
        key = f"certificates/erasure/{request_id}.json"
        self.certifier.issue(key, "key_destruction_certificate", "shred", actor, body, now)
        with self.engine.begin() as conn:
            conn.execute(sa.update(erasures).where(erasures.c.id == request_id).values(state="shredded",
                                                                                         shredded_at=now))
        return Decision(decision.request_id, subject, decision.outcome, decision.basis, decision.retention_end, key)

    def process_restricted(self, actor: str = "system:retention", now: datetime | None = None) -> list[Decision]:
        """Shred every restricted subject whose blocking reasons have ended (R-34)."""
        now = now or utcnow()
        with self.engine.connect() as conn:
            pending = conn.execute(sa.select(erasures).where(erasures.c.state == "restricted")).all()
        done = []
        for r in pending:
            basis, _ = self.blockers(r.subject, now)
            if basis:
                continue
            decision = Decision(r.id, r.subject, "granted", [{"reason": "blocking reasons ended", "was":
                                                              json.loads(r.decision)["basis"]}], None)
            append_audit(self.engine, self.keyring, "erasure_decision", "granted", actor, decision.as_dict(), now)
            done.append(self._shred(r.id, r.subject, actor, now, decision))
        return done

    def access_export(self, subject: str, out_dir: Path, actor: str, now: datetime | None = None) -> dict[str, Any]:
        """Art 15: every record and attachment about `subject`, decrypted, as `records.jsonl` and
        `media/<media id>` in a new directory (0700, files 0600). The export is an audit event."""
        now = now or utcnow()
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=False)
        key_like = f"%{subject_key_id(subject)}%"
        counts = {"records": 0, "unreadable": 0, "disposed": 0, "media": 0}
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(events).where(events.c.subject_key_id.like(key_like))
                                .order_by(events.c.stream, events.c.id)).all()
            meds = conn.execute(sa.select(media).where(media.c.subject_key_id.like(key_like),
                                                       media.c.state == "stored",
                                                       media.c.disposed_at.is_(None))).all()
        fd = os.open(out_dir / "records.jsonl", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in rows:
                entry: dict[str, Any] = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in
                                         r._mapping.items() if k not in ("content", "nonce", "subject_key_id")}
                if r.content is None:
                    entry["content"], counts["disposed"] = None, counts["disposed"] + 1
                else:
                    try:
                        plain = self.keyring.open_record(r)
                        entry["content"] = plain.decode("utf-8", "replace")
                        counts["records"] += 1
                    except KeyDestroyedError:
                        entry["content"], counts["unreadable"] = "(erased)", counts["unreadable"] + 1
                f.write(json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n")
        (out_dir / "media").mkdir(mode=0o700)
        for m in meds:
            try:
                data = open_media(self.keyring, m.stream, m.media_id, m.subject_key_id, self.store.get(m.object_key))
            except KeyDestroyedError:
                continue
            fd = os.open(out_dir / "media" / m.media_id.replace("/", "_"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            counts["media"] += 1
        summary = {"subject": subject, "exported_at": now.isoformat(), **counts}
        append_audit(self.engine, self.keyring, "access_export", "art15", actor, summary, now)
        return summary
