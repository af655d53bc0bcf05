"""Scheduled retention: delete what is past retain-until and not held, under a signed certificate.

`RetentionRun.run()` (CLI `strongroom retention run`, or the worker's daily schedule):

1. re-applies every active legal hold to objects sealed since it was placed;
2. takes the ``retention-run`` lock (PostgreSQL advisory lock / flock: replicas never overlap);
3. picks segments and media objects whose retain-until has passed, skipping any object under
   a hold (SQL) or whose store copy reports a legal hold or a later retain-until;
4. per batch, writes a **disposition certificate** — what (keys, versions, SHA-256, the Merkle
   leaf hashes and chain heads of each segment), why (retention ended, no hold), under which
   schedule rule — signed with Ed25519 and stored WORM at ``dispositions/<id>.json``, and seals
   the same as an event on the audit stream. The intent is recorded in SQL first, so a crash
   mid-batch resumes with the same certificate;
5. deletes the object versions (the store allows it only now) and drops the SQL copy of their
   records' ciphertext;
6. produces the **overdue report**: objects past retain-until (plus a grace day) without a hold
   that still exist. Its expected count is 0 (R-6, R-37); it is sealed on the audit stream too.

The verifier accepts a missing segment only when a validly signed certificate accounts for it:
the certificate's leaf hashes rebuild the Merkle tree, so every later checkpoint still verifies.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import rfc8785
import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from ulid import ULID

from archiver.checkpoint import key_id
from archiver.crypto import PublicKey, Signer, verify_signature
from archiver.db import events, media, segments
from archiver.errors import AccessDeniedError, ObjectNotFoundError, VerificationError
from archiver.keys import KeyRing
from archiver.leases import StreamLocks
from archiver.merkle import hash_leaf
from archiver.normalize import append_audit
from archiver.objectstore import ObjectStore
from archiver.records import canonical
from archiver.segments import decode_segment
from archiver.sqlutil import as_utc, utcnow
from policies.holds import Holds

CERT_FORMAT = "strongroom.disposition/1"
OVERDUE_GRACE = timedelta(days=1)


def certificate_key(cert_id: str) -> str:
    return f"dispositions/{cert_id}.json"


def sign_document(body: dict[str, Any], signing_key: Signer) -> bytes:
    """``{"body": …, "key_id": …, "signature": base64 signature over RFC 8785 of body}``."""
    sig = signing_key.sign(rfc8785.dumps(body))
    return rfc8785.dumps({"body": body, "key_id": key_id(signing_key.public_key()),
                          "signature": base64.b64encode(sig).decode()})


def open_document(data: bytes, public_key: PublicKey, what: str) -> dict[str, Any]:
    """The body of a signed document, or VerificationError naming `what`."""
    try:
        doc = json.loads(data)
        body = doc["body"]
        verify_signature(public_key, base64.b64decode(doc["signature"]), rfc8785.dumps(body))
    except (ValueError, KeyError, TypeError, InvalidSignature) as e:
        raise VerificationError(f"{what}: signature does not verify with the archive's key") from e
    if not isinstance(body, dict):
        raise VerificationError(f"{what}: the signed body is not a document")
    return body


@dataclass(frozen=True)
class Certifier:
    """Issues signed certificates: WORM in the store (readable with only the public key) and
    sealed on the audit stream."""

    engine: sa.Engine
    store: ObjectStore
    keyring: KeyRing
    signer: Callable[[], Signer]  # the key in force, fetched when a certificate is issued
    retain_until: datetime  # certificates are kept as long as the archive's own audit records

    def issue(self, key: str, kind: str, action: str, actor: str, body: dict[str, Any], now: datetime) -> None:
        self.store.put_locked(key, sign_document(body, self.signer()), self.retain_until)
        append_audit(self.engine, self.keyring, kind, action, actor, body, now)


@dataclass
class RunResult:
    certificates: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    not_yet: list[str] = field(default_factory=list)  # the store still reports a later retain-until
    overdue: list[dict[str, Any]] = field(default_factory=list)
    skipped_busy: bool = False


class RetentionRun:
    def __init__(self, certifier: Certifier, holds: Holds, batch: int = 200) -> None:
        self.engine, self.store, self.keyring = certifier.engine, certifier.store, certifier.keyring
        self.certifier = certifier
        self.holds = holds
        self.batch = batch

    def run(self, actor: str = "system:retention", now: datetime | None = None) -> RunResult:
        now = now or utcnow()
        result = RunResult()
        self.holds.refresh(actor, now)
        with StreamLocks(self.engine).hold("retention-run") as mine:
            if not mine:
                result.skipped_busy = True
                return result
            self._resume(result, now)
            while True:
                picked = self._pick(result, now)
                if not picked:
                    break
                self._dispose(picked, actor, result, now)
        result.overdue = self.overdue(now)
        append_audit(self.engine, self.keyring, "overdue_report", "retention", actor,
                     {"at": now.isoformat(), "overdue": result.overdue, "count": len(result.overdue)}, now)
        return result

    # -- choosing -----------------------------------------------------------------------------

    def _candidates(self, now: datetime) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            segs = conn.execute(sa.select(segments).where(
                segments.c.disposed_at.is_(None), segments.c.disposition_id.is_(None),
                segments.c.retain_until <= now).order_by(segments.c.stream, segments.c.first_seq)).all()
            meds = conn.execute(sa.select(media).where(
                media.c.state == "stored", media.c.disposed_at.is_(None), media.c.disposition_id.is_(None),
                media.c.retain_until <= now).order_by(media.c.id)).all()
        return ([{"kind": "segment", "row": r, "key": r.object_key, "version": r.version_id} for r in segs]
                + [{"kind": "media", "row": r, "key": r.object_key, "version": r.version_id} for r in meds])

    def _pick(self, result: RunResult, now: datetime) -> list[dict[str, Any]]:
        held = self.holds.held_keys()
        picked = []
        seen = set(result.held) | set(result.not_yet)
        for c in self._candidates(now):
            if c["key"] in seen:
                continue
            if c["key"] in held:
                result.held.append(c["key"])
                continue
            lock = self.store.retention(c["key"], c["version"])
            if lock.legal_hold:
                result.held.append(c["key"])
                continue
            if lock.retain_until is not None and lock.retain_until > now:
                result.not_yet.append(c["key"])
                continue
            picked.append(c)
            if len(picked) >= self.batch:
                break
        return picked

    # -- disposing ----------------------------------------------------------------------------

    def _entry(self, c: dict[str, Any]) -> dict[str, Any]:
        r = c["row"]
        if c["kind"] == "media":
            return {"kind": "media", "key": r.object_key, "version_id": r.version_id, "stream": r.stream,
                    "retain_until": as_utc(r.retain_until).isoformat()}
        records, meta = decode_segment(self.store.get(r.object_key, r.version_id))
        return {"kind": "segment", "key": r.object_key, "version_id": r.version_id, "sha256": r.sha256,
                "stream": r.stream, "first_seq": r.first_seq, "last_seq": r.last_seq,
                "prev_hash": meta["prev_hash"], "head_hash": r.head_hash, "root_hash": r.root_hash,
                "retain_until": as_utc(r.retain_until).isoformat(),
                "retention_rule": r.retention_rule,
                "leaf_hashes": [hash_leaf(canonical(rec)).hex() for rec in records]}

    def _dispose(self, picked: list[dict[str, Any]], actor: str, result: RunResult, now: datetime) -> None:
        cert_id = str(ULID())
        body = {"format": CERT_FORMAT, "id": cert_id, "created_at": now.isoformat(), "actor": actor,
                "reason": "retention period ended; no legal hold", "objects": [self._entry(c) for c in picked]}
        with self.engine.begin() as conn:  # intent first: a crash resumes with this certificate
            for c in picked:
                table = segments if c["kind"] == "segment" else media
                conn.execute(sa.update(table).where(table.c.id == c["row"].id).values(disposition_id=cert_id))
        self.certifier.issue(certificate_key(cert_id), "disposition_certificate", "dispose", actor, body, now)
        result.certificates.append(cert_id)
        self._delete(cert_id, result, now)

    def _resume(self, result: RunResult, now: datetime) -> None:
        with self.engine.connect() as conn:
            pending = set(conn.execute(sa.select(segments.c.disposition_id).where(
                segments.c.disposition_id.is_not(None), segments.c.disposed_at.is_(None))).scalars())
            pending |= set(conn.execute(sa.select(media.c.disposition_id).where(
                media.c.disposition_id.is_not(None), media.c.disposed_at.is_(None))).scalars())
        for cert_id in sorted(pending):
            try:
                self.store.get(certificate_key(cert_id))
            except ObjectNotFoundError:  # crashed before the certificate was stored: start over
                with self.engine.begin() as conn:
                    for table in (segments, media):
                        conn.execute(sa.update(table).where(table.c.disposition_id == cert_id,
                                                            table.c.disposed_at.is_(None)).values(disposition_id=None))
                continue
            self._delete(cert_id, result, now)

    def _delete(self, cert_id: str, result: RunResult, now: datetime) -> None:
        with self.engine.connect() as conn:
            segs = conn.execute(sa.select(segments).where(segments.c.disposition_id == cert_id,
                                                          segments.c.disposed_at.is_(None))).all()
            meds = conn.execute(sa.select(media).where(media.c.disposition_id == cert_id,
                                                       media.c.disposed_at.is_(None))).all()
        for table, rows in ((segments, segs), (media, meds)):
            for r in rows:
                try:
                    self.store.delete_version(r.object_key, r.version_id)
                except ObjectNotFoundError:
                    pass  # deleted by an earlier, interrupted run
                except AccessDeniedError:
                    result.not_yet.append(r.object_key)  # held or locked after all: leave it
                    with self.engine.begin() as conn:
                        conn.execute(sa.update(table).where(table.c.id == r.id).values(disposition_id=None))
                    continue
                with self.engine.begin() as conn:
                    conn.execute(sa.update(table).where(table.c.id == r.id).values(disposed_at=now))
                    if table is segments:  # the SQL copy of the records' ciphertext goes too
                        conn.execute(sa.update(events).where(events.c.segment_id == r.id)
                                     .values(content=None, nonce=None))
                result.deleted.append(r.object_key)

    # -- the overdue report -------------------------------------------------------------------

    def overdue(self, now: datetime) -> list[dict[str, Any]]:
        """Objects past retain-until (+ a grace day) that still exist and no hold keeps. Expected: none."""
        held = self.holds.held_keys()
        out = []
        with self.engine.connect() as conn:
            for table, kind in ((segments, "segment"), (media, "media")):
                q = sa.select(table.c.object_key, table.c.retain_until).where(
                    table.c.disposed_at.is_(None), table.c.retain_until <= now - OVERDUE_GRACE)
                if table is media:
                    q = q.where(media.c.state == "stored")
                for r in conn.execute(q):
                    if r.object_key not in held:
                        out.append({"kind": kind, "key": r.object_key,
                                    "retain_until": as_utc(r.retain_until).isoformat()})
        return out


def load_certificates(store: ObjectStore, public_keys: PublicKey | list[PublicKey],
                      ) -> tuple[list[dict[str, Any]], list[str]]:
    """Every disposition certificate in the store that verifies (under one of `public_keys`: the
    archive's key history), and the keys of any that do not."""
    keys = public_keys if isinstance(public_keys, list) else [public_keys]
    good, bad = [], []
    for key in store.list_keys("dispositions/"):
        data = store.get(key)
        for pk in keys:
            try:
                body = open_document(data, pk, key)
            except VerificationError:
                continue
            if body.get("format") == CERT_FORMAT:
                good.append(body)
                break
        else:
            bad.append(key)
    return good, bad

