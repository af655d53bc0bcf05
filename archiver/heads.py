"""The archive head: one signed statement of every stream and its newest tree head.

A checkpoint speaks for one stream; nothing in a copy of the store says which streams there
should be, or how far each should reach. The archive head does: every stream with a published
checkpoint, its tree size and root, signed with the archive's key and kept WORM under
``heads/<date>/<time>-<ulid>.json``. `audit.verify` checks the newest one, so a copy with a whole
stream removed, or a stream cut back to before the head, is named offline.

Heads are written by the sealer after a pass that sealed something, at most once per
`interval` (a minute by default): what was sealed after the newest head is covered by the
checkpoints published to independent holders (`archiver.publish`) and by the RFC 3161 tokens.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import rfc8785
import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from ulid import ULID

from archiver.checkpoint import key_id
from archiver.crypto import PublicKey, Signer, verify_signature
from archiver.db import segments
from archiver.errors import CheckpointSignatureError
from archiver.objectstore import ObjectStore
from archiver.records import format_ts

ORIGIN = "strongroom.head/1"
PREFIX = "heads/"


@dataclass(frozen=True, slots=True)
class ArchiveHead:
    time: str
    key_id: str
    streams: dict[str, dict[str, Any]]  # stream -> {"tree_size": int, "root_hash": hex}
    origin: str = ORIGIN

    def signed_bytes(self) -> bytes:
        return rfc8785.dumps({"origin": self.origin, "time": self.time, "key_id": self.key_id,
                              "streams": self.streams})

    def sign(self, key: Signer) -> bytes:
        doc = {"head": json.loads(self.signed_bytes()), "signature": base64.b64encode(key.sign(self.signed_bytes())).decode()}
        return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def verified(cls, data: bytes, public_key: PublicKey, item: str) -> ArchiveHead:
        """Parse and check a stored head. Raises `CheckpointSignatureError` naming `item`."""
        try:
            doc = json.loads(data)
            h = doc["head"]
            head = cls(h["time"], h["key_id"], h["streams"], h["origin"])
            sig = base64.b64decode(doc["signature"], validate=True)
            if head.origin != ORIGIN or not isinstance(head.streams, dict):
                raise ValueError(f"unknown origin {head.origin!r}")
            for s in head.streams.values():
                if not isinstance(s.get("tree_size"), int) or not isinstance(s.get("root_hash"), str):
                    raise ValueError("a stream entry without tree_size and root_hash")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointSignatureError(item, f"malformed archive head: {e}") from e
        if head.key_id != key_id(public_key):
            raise CheckpointSignatureError(item, f"signed by key {head.key_id}, expected {key_id(public_key)}")
        try:
            verify_signature(public_key, sig, head.signed_bytes())
        except InvalidSignature as e:
            raise CheckpointSignatureError(item, "signature does not verify") from e
        return head


def head_key(at: datetime) -> str:
    return f"{PREFIX}{at:%Y-%m-%d}/{at:%Y%m%dT%H%M%S%f}Z-{ULID()}.json"


def current(engine: sa.Engine) -> dict[str, dict[str, Any]]:
    """Every stream's newest published checkpoint, from SQL: {stream: {tree_size, root_hash}}."""
    newest = (sa.select(segments.c.stream, sa.func.max(segments.c.last_seq).label("last"))
              .where(segments.c.checkpoint_key.is_not(None)).group_by(segments.c.stream).subquery())
    with engine.connect() as conn:
        rows = conn.execute(sa.select(segments.c.stream, segments.c.last_seq, segments.c.root_hash).join(
            newest, sa.and_(segments.c.stream == newest.c.stream, segments.c.last_seq == newest.c.last))).all()
    return {r.stream: {"tree_size": r.last_seq + 1, "root_hash": r.root_hash} for r in sorted(rows)}


@dataclass(frozen=True, slots=True)
class StoredHead:
    key: str
    data: bytes  # the stored bytes (what a TSA stamps)
    retain_until: datetime
    head: ArchiveHead


def write_head(engine: sa.Engine, store: ObjectStore, signing_key: Signer,
               retain_until: Callable[[str, datetime], tuple[datetime, str]], now: datetime) -> StoredHead | None:
    """Sign and store the archive head as of now (None: nothing sealed yet)."""
    streams = current(engine)
    if not streams:
        return None
    head = ArchiveHead(format_ts(now), key_id(signing_key.public_key()), streams)
    key, data = head_key(now), head.sign(signing_key)
    # kept as long as the longest-kept stream it names (it carries no personal data)
    until = max(retain_until(s, now)[0] for s in streams)
    store.put_locked(key, data, until)
    return StoredHead(key, data, until, head)


def newest(store: ObjectStore) -> str | None:
    """The key of the newest stored head (keys sort by time)."""
    return max(store.list_keys(PREFIX), default=None)
