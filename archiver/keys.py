"""The key ring: per-subject data keys, stored wrapped by the KEK, cached unwrapped in memory.

Key ids name what a key protects and never contain an identifier in the clear:
``subj:<blind index>`` for a data subject (a customer's wa_id or BSUID), ``biz:<stream>`` for
business-level records of one number, ``inbox:<YYYY-MM>`` for raw bodies waiting in the inbox,
``system:<name>`` for the archive's own records.
"""

from __future__ import annotations

import os
import threading

import sqlalchemy as sa

from archiver.crypto import KEY_SIZE, BlindIndex, Kek, decrypt, derive_content_key
from archiver.db import data_keys
from archiver.errors import KeyDestroyedError
from archiver.records import content_aad
from archiver.sqlutil import insert_ignore, utcnow


class KeyRing:
    def __init__(self, engine: sa.Engine, kek: Kek, blind_index: BlindIndex) -> None:
        self.engine = engine
        self.kek = kek
        self.blind_index = blind_index
        self._cache: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def subject_key_id(self, namespace: str, value: str) -> str:
        return "subj:" + self.blind_index(namespace, value)

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
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(data_keys.c.wrapped, data_keys.c.destroyed_at).where(data_keys.c.key_id == key_id)
            ).first()
            if row is None:
                if not create:
                    raise KeyError(key_id)
                purpose = key_id.split(":", 1)[0]
                wrapped = self.kek.wrap(os.urandom(KEY_SIZE), key_id)
                insert_ignore(conn, data_keys, [{
                    "key_id": key_id, "purpose": purpose, "wrapped": wrapped,
                    "kek_id": self.kek.kek_id, "created_at": utcnow(),
                }])
                # Another process may have won the race: always use what is stored.
                row = conn.execute(
                    sa.select(data_keys.c.wrapped, data_keys.c.destroyed_at).where(data_keys.c.key_id == key_id)
                ).one()
        if row.wrapped is None:
            raise KeyDestroyedError(f"data key {key_id} was destroyed at {row.destroyed_at}")
        key = self.kek.unwrap(row.wrapped, key_id)
        with self._lock:
            self._cache[key_id] = key
        return key

    def content_key(self, key_ids: list[str], create: bool = True) -> bytes:
        return derive_content_key([(k, self.data_key(k, create)) for k in key_ids])

    def open_content(self, stream: str, natural_key: str, subject_key_id: str, nonce: bytes,
                     content: bytes) -> bytes:
        """Decrypt a record's content (authenticated against its stream and natural key).

        Raises:
            KeyDestroyedError: one of the record's subjects was crypto-shredded.
            DecryptionError: wrong key, wrong record, or tampered ciphertext.
        """
        key = self.content_key(subject_key_id.split(","), create=False)
        return decrypt(key, nonce, content, content_aad(stream, natural_key))

    def forget(self, key_id: str) -> None:
        """Drop a cached key (after it was destroyed elsewhere)."""
        with self._lock:
            self._cache.pop(key_id, None)
