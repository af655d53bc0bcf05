"""The key ring: per-subject data keys, stored wrapped by the KEK, cached unwrapped in memory.

Key ids name what a key protects and never contain an identifier in the clear:
``subj:<subject id>`` for a data subject (a random id; see `archiver.identity` for which
phone number or BSUID it was known by, and when), ``biz:<stream>`` for
business-level records of one number, ``inbox:<YYYY-MM>`` for raw bodies waiting in the inbox,
``system:<name>`` for the archive's own records.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa

from archiver import failpoints
from archiver.crypto import (
    KEY_SIZE,
    BlindIndex,
    DecryptionError,
    Kek,
    decrypt,
    derive_content_key,
    encrypt,
    record_key,
)
from archiver.db import data_keys
from archiver.errors import KeyDestroyedError, RaceError
from archiver.leases import StreamLocks
from archiver.records import content_aad
from archiver.sqlutil import insert_ignore, utcnow


class KeyRaceError(RaceError):
    """Another process stored a different data key under the same id first."""

    def __init__(self, key_ids: list[str]) -> None:
        self.key_ids = key_ids
        super().__init__(f"data keys created concurrently elsewhere: {len(key_ids)}")


class KeyRing:
    def __init__(self, engine: sa.Engine, kek: Kek, blind_index: BlindIndex) -> None:
        self.engine = engine
        self.kek = kek
        self.blind_index = blind_index
        self._cache: dict[str, bytes] = {}
        self._derived: dict[tuple[str, ...], bytes] = {}
        self._lock = threading.Lock()
        self._local = threading.local()  # .new: keys created in a deferred batch, not yet stored

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Create new data keys in memory only; `store_new` must persist them before use.

        Lets a batch write its new keys in the same transaction as the data they protect:
        one commit instead of one per new subject, and never ciphertext without its key.
        """
        self._local.new = {}
        try:
            yield
        finally:
            for key_id in self._local.new:
                self.forget(key_id)  # stored ones are re-read from SQL on next use
            self._local.new = None

    def store_new(self, conn: sa.Connection) -> None:
        """Persist keys created under `deferred` on `conn`'s transaction.

        Raises:
            KeyRaceError: another process stored a different key under one of these ids
                first; the caller rolls back and rebuilds with the stored key.
        """
        new: dict[str, tuple[bytes, str]] = getattr(self._local, "new", None) or {}
        if not new:
            return
        now = utcnow()
        insert_ignore(conn, data_keys, [
            {"key_id": k, "purpose": k.split(":", 1)[0], "wrapped": w, "kek_id": kek_id, "created_at": now}
            for k, (w, kek_id) in new.items()
        ])
        stored = {r.key_id: r.wrapped for r in conn.execute(
            sa.select(data_keys.c.key_id, data_keys.c.wrapped).where(data_keys.c.key_id.in_(list(new))))}
        lost = [k for k, (w, _) in new.items() if stored.get(k) != w]
        if lost:
            raise KeyRaceError(lost)
        new.clear()

    def data_key(self, key_id: str, create: bool = True) -> bytes:
        """The unwrapped data key `key_id`, created on first use when `create` is set.

        Raises:
            KeyDestroyedError: the key was crypto-shredded.
            KeyError: the key does not exist and `create` is false.
        """
        with self._lock:
            cached = self._cache.get(key_id)
        if cached is not None:
            return cached
        deferred: dict[str, tuple[bytes, str]] | None = getattr(self._local, "new", None)
        row = self._row(key_id)
        if row is None:
            if not create:
                raise KeyError(key_id)
            if deferred is not None:
                key = os.urandom(KEY_SIZE)
                deferred[key_id] = self.kek.wrap_with_id(key, key_id)
                with self._lock:
                    self._cache[key_id] = key
                return key
            wrapped, kek_id = self.kek.wrap_with_id(os.urandom(KEY_SIZE), key_id)
            with self.engine.begin() as conn:
                insert_ignore(conn, data_keys, [{
                    "key_id": key_id, "purpose": key_id.split(":", 1)[0], "wrapped": wrapped,
                    "kek_id": kek_id, "created_at": utcnow(),
                }])
            row = self._row(key_id)  # another process may have won the race: always use what is stored
            assert row is not None
        if row.wrapped is None:
            raise KeyDestroyedError(f"data key {key_id} was destroyed at {row.destroyed_at}")
        try:
            key = self.kek.unwrap(row.wrapped, key_id, row.kek_id)
        except DecryptionError:  # re-wrapped by a KEK rotation since the row was read: read it again
            row = self._row(key_id)
            if row is None or row.wrapped is None:
                raise
            key = self.kek.unwrap(row.wrapped, key_id, row.kek_id)
        with self._lock:
            self._cache[key_id] = key
        return key

    def _row(self, key_id: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(data_keys.c.wrapped, data_keys.c.kek_id, data_keys.c.destroyed_at)
                                .where(data_keys.c.key_id == key_id)).first()

    def content_key(self, key_ids: list[str], create: bool = True) -> bytes:
        ids = tuple(sorted(key_ids))
        with self._lock:
            derived = self._derived.get(ids)
        if derived is None:
            derived = derive_content_key([(k, self.data_key(k, create)) for k in ids])
            with self._lock:
                self._derived[ids] = derived
        return derived

    def seal_content(self, stream: str, natural_key: str, key_ids: list[str], plaintext: bytes,
                     create: bool = True) -> tuple[bytes, bytes]:
        """(nonce, ciphertext) of a record's content under its own record key (`crypto.record_key`)."""
        aad = content_aad(stream, natural_key)
        return encrypt(record_key(self.content_key(key_ids, create), aad), plaintext, aad)

    def record_key_of(self, stream: str, natural_key: str, subject_key_id: str, nonce: bytes,
                      content: bytes) -> bytes:
        """The key that opens this record's ciphertext, and only this record's (what a bundle
        discloses). Records sealed before record keys were encrypted under their subjects' content
        key itself: for those that key is returned (it opens every record of the same subjects).

        Raises:
            KeyDestroyedError: one of the record's subjects was crypto-shredded.
            DecryptionError: neither key opens it (wrong record, or tampered ciphertext).
        """
        key = self.content_key(subject_key_id.split(","), create=False)
        aad = content_aad(stream, natural_key)
        for candidate in (record_key(key, aad), key):
            try:
                decrypt(candidate, nonce, content, aad)
            except DecryptionError:
                continue
            return candidate
        raise DecryptionError("ciphertext failed authentication")

    def key_for_sealed(self, sealed: bytes | None) -> bytes | None:
        """The key that opens one sealed record's content (`record_key_of` on its canonical bytes),
        what a bundle or a record page discloses so its content can be checked against the seal;
        None when there is nothing to open (no content kept, erased, disposed)."""
        if sealed is None:
            return None
        rec = json.loads(sealed)
        if rec.get("content") is None or rec.get("nonce") is None:
            return None
        try:
            return self.record_key_of(rec["stream"], rec["natural_key"], rec["subject_key_id"],
                                      base64.b64decode(rec["nonce"]), base64.b64decode(rec["content"]))
        except KeyDestroyedError:
            return None

    def open_content(self, stream: str, natural_key: str, subject_key_id: str, nonce: bytes,
                     content: bytes) -> bytes:
        """Decrypt a record's content (authenticated against its stream and natural key).

        Raises:
            KeyDestroyedError: one of the record's subjects was crypto-shredded.
            DecryptionError: wrong key, wrong record, or tampered ciphertext.
        """
        key = self.content_key(subject_key_id.split(","), create=False)
        aad = content_aad(stream, natural_key)
        try:
            return decrypt(record_key(key, aad), nonce, content, aad)
        except DecryptionError:  # sealed before record keys: under the content key itself
            return decrypt(key, nonce, content, aad)

    def open_record(self, record: Any) -> bytes:
        """Decrypt the content of an `events` row or a sealed record dict (see `open_content`)."""
        m = record._mapping if hasattr(record, "_mapping") else record
        return self.open_content(m["stream"], m["natural_key"], m["subject_key_id"], m["nonce"], m["content"])

    def forget(self, key_id: str) -> None:
        """Drop a cached key and everything derived from it (after it was destroyed elsewhere)."""
        with self._lock:
            self._cache.pop(key_id, None)
            for ids in [ids for ids in self._derived if key_id in ids]:
                del self._derived[ids]


# -- KEK rotation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KekRotation:
    old_kek_ids: list[str]
    new_kek_id: str
    rewrapped: int
    resumed: bool  # a rotation a crash had left under way was finished
    destroyed_at: str = ""  # when the old versions are gone (a KMS key: its scheduled deletion date)


class RotatableKek(Kek, Protocol):
    """A KEK that can be rotated: `KekRing` (files), `Pkcs11Kek` (on the token), `KmsKek` (by alias)."""

    @property
    def versions(self) -> list[str]: ...

    def begin_rotation(self, to: str | None = None) -> bool:
        """Put a successor in place that wraps from now on; True if one was there already (resumed)."""
        ...

    def retire(self) -> tuple[list[str], str]:
        """Destroy every version but the successor; (their ids, when they are gone)."""
        ...


SETTLE_SECONDS = 2.0  # after the last pass, for a wrap another process began under the old version


def rotate_kek(engine: sa.Engine, kek: RotatableKek, batch: int = 500, to: str | None = None) -> KekRotation:
    """Re-wrap every data key under a new KEK version, then destroy the old version.

    Resumable: the successor is put in place first (a `<kek file>.next`, 0600 and fsync'd; a key
    labelled ``….next`` on the token; the KMS alias moved to `to`) and wraps from then on in every
    process; each batch of rows is re-wrapped and committed (a row is updated only if it is still
    under an old version, so none is re-wrapped twice); only when no row is left under an old
    version is it destroyed. A crash anywhere leaves a state a rerun finishes. Shredded keys (no
    wrapped value) need nothing: once the old version is gone, no backup can unwrap them either.
    """
    with StreamLocks(engine).hold("kek-rotation") as mine:
        if not mine:
            raise RaceError("another process is rotating the KEK")
        return _rotate(engine, kek, batch, to)


def _rotate(engine: sa.Engine, kek: RotatableKek, batch: int, to: str | None) -> KekRotation:
    resumed = kek.begin_rotation(to)
    new_id = kek.kek_id  # the successor wraps from now on, in every process
    old_ids = [k for k in kek.versions if k != new_id]
    done, passes = 0, 0
    while True:
        while True:
            with engine.begin() as conn:
                rows = conn.execute(sa.select(data_keys.c.key_id, data_keys.c.wrapped, data_keys.c.kek_id).where(
                    data_keys.c.wrapped.is_not(None), data_keys.c.kek_id != new_id).limit(batch)).all()
                for r in rows:
                    key = kek.unwrap(r.wrapped, r.key_id, r.kek_id)
                    wrapped, kek_id = kek.wrap_with_id(key, r.key_id)
                    done += conn.execute(sa.update(data_keys).where(data_keys.c.key_id == r.key_id,
                                                                    data_keys.c.kek_id == r.kek_id)
                                         .values(wrapped=wrapped, kek_id=kek_id)).rowcount
            failpoints.hit("kek.after_batch")
            if len(rows) < batch:
                break
        passes += 1
        time.sleep(SETTLE_SECONDS if passes == 1 else 0)
        with engine.connect() as conn:
            left = conn.execute(sa.select(sa.func.count()).select_from(data_keys).where(
                data_keys.c.wrapped.is_not(None), data_keys.c.kek_id != new_id)).scalar_one()
        if not left:
            break
        if passes >= 3:
            raise RaceError(f"{left} data keys are still wrapped by an old KEK version: run the rotation again")
    destroyed, when = kek.retire()
    return KekRotation(sorted(set(old_ids) | set(destroyed)), new_id, done, resumed, when)


