"""Signed tree heads ("checkpoints") for one stream.

A checkpoint commits to the stream's Merkle tree over *all* records so far: tree size,
root hash, chain head hash, and the time it was signed, with an Ed25519 signature over the
RFC 8785 bytes of those fields. It carries no personal data, so it is kept for the life of the
stream, and anyone with our public key can check it.

Since ``strongroom.checkpoint/2`` a checkpoint also commits to the bytes of the segment it seals
(its object key and SHA-256: a byte changed anywhere in the Parquet file — data, statistics,
footer — fails) and to the checkpoint before it (the SHA-256 of its signed bytes and its tree
size), so the checkpoints of a stream form a chain in which a missing one is named and, through
it, every segment object is committed. Version 1 checkpoints (without these fields) still verify.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature

from archiver.crypto import PublicKey, Signer, verify_signature
from archiver.errors import CheckpointSignatureError
from exporters.verify_bundle import _key_id

ORIGIN_V1 = "strongroom.checkpoint/1"
ORIGIN = "strongroom.checkpoint/2"
ORIGINS = (ORIGIN_V1, ORIGIN)
V2_FIELDS = ("segment", "segment_sha256", "previous_sha256", "previous_size")


def key_id(public_key: PublicKey) -> str:
    """SHA-256 of the raw Ed25519 key (or of an ECDSA key's DER SPKI), 16 hex digits."""
    return _key_id(public_key)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    stream: str
    tree_size: int
    root_hash: str  # hex
    head_hash: str  # hex
    time: str  # ISO-8601 UTC
    key_id: str
    origin: str = ORIGIN
    segment: str | None = None  # v2: the object key of the segment this checkpoint seals
    segment_sha256: str | None = None  # v2: the SHA-256 of that object's bytes
    previous_sha256: str | None = None  # v2: SHA-256 of the previous checkpoint's signed bytes (None: first)
    previous_size: int | None = None  # v2: its tree size

    def fields(self) -> dict[str, Any]:
        """What is signed: every field (a v1 checkpoint has none of the v2 ones)."""
        doc = asdict(self)
        if self.origin == ORIGIN_V1:
            for name in V2_FIELDS:
                if doc.pop(name) is not None:
                    raise ValueError(f"a {ORIGIN_V1} checkpoint has no {name}")
        return doc

    def signed_bytes(self) -> bytes:
        return rfc8785.dumps(self.fields())

    def digest(self) -> str:
        """What the next checkpoint's `previous_sha256` holds."""
        return hashlib.sha256(self.signed_bytes()).hexdigest()


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    signature: bytes

    @classmethod
    def sign(cls, cp: Checkpoint, private_key: Signer) -> SignedCheckpoint:
        return cls(cp, private_key.sign(cp.signed_bytes()))

    def to_json(self) -> bytes:
        doc = {
            "checkpoint": self.checkpoint.fields(),
            "signature": base64.b64encode(self.signature).decode(),
        }
        return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, item: str = "checkpoint") -> SignedCheckpoint:
        try:
            doc: dict[str, Any] = json.loads(data)
            cp = Checkpoint(**doc["checkpoint"])
            sig = base64.b64decode(doc["signature"], validate=True)
            if not isinstance(cp.tree_size, int) or cp.tree_size < 0:
                raise ValueError(f"invalid tree size {cp.tree_size!r}")
            cp.fields()  # a v1 origin with v2 fields is malformed
        except (ValueError, KeyError, TypeError) as e:
            # Malformed input must surface as a verification failure, not a raw ValueError.
            raise CheckpointSignatureError(item, f"malformed checkpoint: {e}") from e
        return cls(cp, sig)

    def verify(self, public_key: PublicKey, item: str = "checkpoint") -> None:
        if self.checkpoint.origin not in ORIGINS:
            raise CheckpointSignatureError(item, f"unknown origin {self.checkpoint.origin!r}")
        if self.checkpoint.key_id != key_id(public_key):
            raise CheckpointSignatureError(
                item, f"signed by key {self.checkpoint.key_id}, expected {key_id(public_key)}"
            )
        try:
            verify_signature(public_key, self.signature, self.checkpoint.signed_bytes())
        except InvalidSignature as e:
            raise CheckpointSignatureError(item, "signature does not verify") from e
