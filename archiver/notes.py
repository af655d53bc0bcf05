"""Checkpoints as C2SP signed notes, for holders outside the archive (and their witnesses).

Each stream is a transparency log in the sense of C2SP ``tlog-checkpoint``: its checkpoint is
the note body ``<origin>\\n<tree size>\\n<base64 root hash>\\n`` signed per C2SP ``signed-note``
with the archive's Ed25519 key (key ID ``SHA-256(name ‖ "\\n" ‖ 0x01 ‖ public key)[:4]``). A
witness that follows the log cosigns it per C2SP ``tlog-cosignature`` (``cosignature/v1``,
key ID with 0x04, a big-endian u64 timestamp before the signature); `verify_note` checks those
cosignatures for the witness keys it is given.

References: https://c2sp.org/signed-note, https://c2sp.org/tlog-checkpoint,
https://c2sp.org/tlog-cosignature.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ED25519, COSIGNATURE_V1 = 0x01, 0x04
DASH = "\u2014 "  # em dash and space: the start of a signature line


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_hash(name: str, key: Ed25519PublicKey, kind: int = ED25519) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([kind]) + _raw(key)).digest()[:4]


def vkey(name: str, key: Ed25519PublicKey, kind: int = ED25519) -> str:
    """The verifier key string: ``<name>+<key hash hex>+<base64(type ‖ public key)>``."""
    return f"{name}+{key_hash(name, key, kind).hex()}+{base64.b64encode(bytes([kind]) + _raw(key)).decode()}"


def parse_vkey(text: str) -> tuple[str, int, Ed25519PublicKey]:
    """(name, signature type, public key) of a verifier key. Raises `ValueError`."""
    try:
        name, hash_hex, b64 = text.strip().split("+", 2)  # a key name holds no "+"; base64 may
        raw = base64.b64decode(b64, validate=True)
        kind, key = raw[0], Ed25519PublicKey.from_public_bytes(raw[1:])
    except (ValueError, IndexError) as e:
        raise ValueError(f"not a verifier key: {text[:60]!r}") from e
    if kind not in (ED25519, COSIGNATURE_V1) or key_hash(name, key, kind).hex() != hash_hex:
        raise ValueError(f"verifier key {name!r}: its key hash does not match its key")
    return name, kind, key


def body(origin: str, tree_size: int, root: bytes) -> str:
    if not origin or "\n" in origin or tree_size < 0 or len(root) != 32:
        raise ValueError("a checkpoint needs an origin line, a size and a 32-byte root")
    return f"{origin}\n{tree_size}\n{base64.b64encode(root).decode()}\n"


def sign_note(text: str, name: str, key: Ed25519PrivateKey) -> str:
    sig = key.sign(text.encode())
    return text + "\n" + DASH + name + " " + base64.b64encode(key_hash(name, key.public_key()) + sig).decode() + "\n"


def cosign(note: str, name: str, key: Ed25519PrivateKey, timestamp: int) -> str:
    """Add a `cosignature/v1` line (what a witness does; used here by tests and by a firm that runs one)."""
    text = note.split("\n\n", 1)[0] + "\n"
    msg = f"cosignature/v1\ntime {timestamp}\n".encode() + text.encode()
    sig = key_hash(name, key.public_key(), COSIGNATURE_V1) + struct.pack(">Q", timestamp) + key.sign(msg)
    return note + DASH + name + " " + base64.b64encode(sig).decode() + "\n"


@dataclass(frozen=True)
class NoteCheckpoint:
    origin: str
    tree_size: int
    root: bytes
    cosigned_by: tuple[str, ...]  # the witnesses (of those given) whose cosignature verified


def verify_note(note: str, name: str, key: Ed25519PublicKey,
                witnesses: Sequence[tuple[str, Ed25519PublicKey]] = ()) -> NoteCheckpoint:
    """Parse a checkpoint note and check our signature on it, and the cosignature of each of
    `witnesses` (name, key) — every one given must have cosigned.

    Raises:
        ValueError: malformed, not signed by `key` as `name`, or a witness's cosignature missing or bad.
    """
    text, sep, sigs = note.partition("\n\n")
    if not sep:
        raise ValueError("not a signed note (no blank line before the signatures)")
    text += "\n"
    lines = text.split("\n")
    if len(lines) < 4:
        raise ValueError("a checkpoint note has an origin, a size and a root hash")
    try:
        origin, size, root = lines[0], int(lines[1]), base64.b64decode(lines[2], validate=True)
    except ValueError as e:
        raise ValueError(f"malformed checkpoint note: {e}") from e
    if not lines[1].isdigit() or len(root) != 32:
        raise ValueError("malformed checkpoint note: size or root hash")
    found: dict[tuple[str, bytes], bytes] = {}
    for line in sigs.splitlines():
        if not line.startswith(DASH):
            continue
        who, _, b64 = line[len(DASH):].rpartition(" ")
        try:
            raw = base64.b64decode(b64, validate=True)
        except ValueError:
            continue
        if len(raw) > 4:
            found[(who, raw[:4])] = raw[4:]
    ours = found.get((name, key_hash(name, key)))
    if ours is None:
        raise ValueError(f"no signature by {name} (key hash {key_hash(name, key).hex()})")
    try:
        key.verify(ours, text.encode())
    except InvalidSignature as e:
        raise ValueError(f"the signature by {name} does not verify") from e
    cosigned = []
    for wname, wkey in witnesses:
        cosig = found.get((wname, key_hash(wname, wkey, COSIGNATURE_V1)))
        if cosig is None or len(cosig) != 72:
            raise ValueError(f"no cosignature by witness {wname}")
        (ts,) = struct.unpack(">Q", cosig[:8])
        try:
            wkey.verify(cosig[8:], f"cosignature/v1\ntime {ts}\n".encode() + text.encode())
        except InvalidSignature as e:
            raise ValueError(f"the cosignature by witness {wname} does not verify") from e
        cosigned.append(wname)
    return NoteCheckpoint(origin, size, root, tuple(cosigned))
