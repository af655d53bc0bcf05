"""Signing-key rotation without breaking history.

A rotation is a statement — old key, new key, the time the old one retires — signed by both
keys and kept WORM under ``keys/rotations/<sequence>.json`` (stamped by the TSAs when they are
configured). Every checkpoint, head, certificate and manifest names the key that signed it;
`KeyHistory` (one implementation, in the standalone verifier) accepts each signature under the
key it names if that key was in force at the signature's time, and refuses a retired key's
signatures made after its retirement.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta
from typing import Any

import rfc8785

from archiver.checkpoint import key_id
from archiver.crypto import PublicKey, Signer
from archiver.errors import ConflictError
from archiver.objectstore import ObjectStore
from archiver.records import format_ts
from exporters.verify_bundle import ROTATION_ORIGIN, KeyHistory, _raw_key

__all__ = ["PREFIX", "KeyHistory", "load", "rotation_statement", "statements"]

PREFIX = "keys/rotations/"
# The old key retires this long after the statement is made: a sealer that read the old key just
# before the new key file replaced it still signs before the retirement.
GRACE = timedelta(seconds=5)


def statements(store: ObjectStore) -> list[bytes]:
    return [store.get(k) for k in sorted(store.list_keys(PREFIX))]


def load(store: ObjectStore, anchor: PublicKey) -> KeyHistory:
    """The archive's key history from its stored rotation statements, linked to `anchor`.

    Raises:
        ValueError: a statement that does not verify, a broken chain, or `anchor` not in it.
    """
    return KeyHistory(anchor, statements(store))


def _raw(key: PublicKey) -> str:
    return base64.b64encode(_raw_key(key)).decode()


def rotation_statement(old: Signer, new: Signer, sequence: int, retires_at: datetime) -> bytes:
    st: dict[str, Any] = {"origin": ROTATION_ORIGIN, "sequence": sequence, "time": format_ts(retires_at),
          "old_key": _raw(old.public_key()), "old_key_id": key_id(old.public_key()),
          "new_key": _raw(new.public_key()), "new_key_id": key_id(new.public_key())}
    signed = rfc8785.dumps(st)
    doc = {"statement": st, "old_signature": base64.b64encode(old.sign(signed)).decode(),
           "new_signature": base64.b64encode(new.sign(signed)).decode()}
    return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"


def store_rotation(store: ObjectStore, old: Signer, new: Signer, now: datetime,
                   retain_until: datetime) -> tuple[str, bytes]:
    """Sign and store the statement retiring `old` for `new` (GRACE from now). Returns (key, bytes).

    Raises:
        ConflictError: `old` is not the key in force according to the stored history.
    """
    history = load(store, old.public_key())
    if history.current_id != key_id(old.public_key()):
        raise ConflictError("the signing key in force", history.current_id, key_id(old.public_key()))
    sequence = len(history.statements) + 1
    data = rotation_statement(old, new, sequence, now + GRACE)
    key = f"{PREFIX}{sequence:06d}.json"
    store.put_locked(key, data, retain_until)
    return key, data
