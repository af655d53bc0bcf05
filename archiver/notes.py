"""Checkpoints as C2SP signed notes, for holders outside the archive (and their witnesses).

Each stream is a transparency log in the sense of C2SP ``tlog-checkpoint``: its checkpoint is
the note body ``<origin>\\n<tree size>\\n<base64 root hash>\\n`` signed per C2SP ``signed-note``
with the archive's key: Ed25519 (type 0x01, key ID ``SHA-256(name ‖ "\\n" ‖ 0x01 ‖ public key)[:4]``) or,
for a key in AWS KMS, ECDSA P-256 (type 0x02, as github.com/transparency-dev/witness signs: key ID
the first four bytes of SHA-256 of the DER SPKI, the signature DER over SHA-256 of the text). A
witness that follows the log cosigns it per C2SP ``tlog-cosignature`` (``cosignature/v1``,
key ID with 0x04, a big-endian u64 timestamp before the signature); `verify_note` checks those
cosignatures for the witness keys it is given.

References: https://c2sp.org/signed-note, https://c2sp.org/tlog-checkpoint,
https://c2sp.org/tlog-cosignature.
"""

from __future__ import annotations

import base64
import struct

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from archiver.crypto import PublicKey, Signer

# Reading and checking notes is the standalone verifier's (a regulator runs that file alone).
from exporters.verify_bundle import (
    COSIGNATURE_V1,
    DASH,
    ECDSA,
    ED25519,
    NoteCheckpoint,
    _raw_key,
    key_hash,
    note_kind,
    parse_vkey,
    parse_witness,
    verify_note,
)

__all__ = ["COSIGNATURE_V1", "ECDSA", "ED25519", "NoteCheckpoint", "body", "cosign", "key_hash", "parse_vkey", "parse_witness", "sign_note",
           "verify_note", "vkey"]


def vkey(name: str, key: PublicKey, kind: int | None = None) -> str:
    """The verifier key string: ``<name>+<key hash hex>+<base64(type ‖ public key)>`` (type: the key's)."""
    kind = note_kind(key) if kind is None else kind
    return f"{name}+{key_hash(name, key, kind).hex()}+{base64.b64encode(bytes([kind]) + _raw_key(key)).decode()}"


def body(origin: str, tree_size: int, root: bytes) -> str:
    if not origin or "\n" in origin or tree_size < 0 or len(root) != 32:
        raise ValueError("a checkpoint needs an origin line, a size and a 32-byte root")
    return f"{origin}\n{tree_size}\n{base64.b64encode(root).decode()}\n"


def sign_note(text: str, name: str, key: Signer) -> str:
    sig = key.sign(text.encode())
    return text + "\n" + DASH + name + " " + base64.b64encode(key_hash(name, key.public_key()) + sig).decode() + "\n"


def cosign(note: str, name: str, key: Ed25519PrivateKey, timestamp: int) -> str:
    """Add a `cosignature/v1` line (what a witness does; used here by tests and by a firm that runs one)."""
    text = note.split("\n\n", 1)[0] + "\n"
    msg = f"cosignature/v1\ntime {timestamp}\n".encode() + text.encode()
    sig = key_hash(name, key.public_key(), COSIGNATURE_V1) + struct.pack(">Q", timestamp) + key.sign(msg)
    return note + DASH + name + " " + base64.b64encode(sig).decode() + "\n"


