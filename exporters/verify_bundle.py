"""Offline verification of a strongroom export bundle, with nothing but the archive's public key.

Standalone on purpose: it needs only the Python standard library and ``cryptography`` (plus
``pyarrow`` to count Parquet rows, if installed), so a regulator can copy this one file and run

    python verify_bundle.py BUNDLE_DIR_OR_ZIP strongroom.pub

It checks, and names whatever fails:
1. ``manifest.sig``: the archive's signature over the exact bytes of ``manifest.json`` (Ed25519,
   or ECDSA P-256 with SHA-256 where the archive's key is in AWS KMS; the key's type decides);
2. every file the manifest lists: present, same size, same SHA-256; and no file it does not list;
3. record counts: JSONL lines, DAT rows, OPT lines, Parquet rows, and the manifest's totals;
4. every signed checkpoint of the snapshot (signature, key id, origin);
5. every record: an RFC 6962 inclusion proof from SHA-256(0x00 ‖ sealed record) to its number's
   checkpoint root, and the record's metadata in ``records.jsonl`` equal to the sealed record's;
6. every record's content, bound to the seal: the sealed ciphertext is decrypted with the record's
   own key, disclosed beside its proof (it opens that record and nothing else), and the content
   in ``records.jsonl`` and ``records.parquet``, the body of its RSMF event, the RSMF's text part,
   the extracted text (TEXT/) and the transcript must all equal it; every attachment native (and
   every file inside an RSMF) must hash to a sealed media record's SHA-256. A record without a
   disclosed key (its subject erased, or its segment disposed after retention) may only be listed
   as withheld.

Files are hashed as streams and the proven records are kept in a temporary SQLite file (stdlib),
so memory does not grow with the number of records. A hostile bundle cannot fool or exhaust it:
a zip with two entries of one name (one for the verifier, one for `unzip`), a link or other
non-regular entry, or a manifest over 64 MiB is refused before anything is read; a listed file
is read only when its stored size is the manifest's, and never past that size; only files whose
hash verified are parsed further.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import re
import sqlite3
import struct
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import unescape
from pathlib import Path
from typing import IO, Any, NamedTuple

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
    load_pem_public_key,
)

# The archive signs with Ed25519 (file or HSM key) or, where the key is in AWS KMS (which has no
# Ed25519), ECDSA P-256 with SHA-256. Every signature names its key by id; the key's type says
# which algorithm checks it.
PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey

ALLOWED_EXTRA = {"manifest.json", "manifest.sig", "transfers.jsonl"}
MAX_MANIFEST = 64 * 1024 * 1024  # a production of millions of records has a manifest of a few MB


class BundleRefused(ValueError):
    """The bundle's container itself is malformed or hostile; nothing in it was trusted."""
CHECKPOINT_ORIGINS = ("strongroom.checkpoint/1", "strongroom.checkpoint/2")
HEAD_ORIGIN = "strongroom.head/1"
ROTATIONS = "keys/rotations.json"  # the archive's key rotation statements, when it has any
BOUND_FIELDS = ("stream", "seq", "kind", "natural_key", "tenant", "wamid", "ref_wamid", "conversation", "direction",
                "origin", "type", "status", "template_name", "template_language")


class _Source:
    """A bundle directory or zip file: its regular files, each name once, with their sizes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip = zipfile.ZipFile(path) if path.is_file() else None
        self.sizes: dict[str, int] = {}
        if self.zip is not None:
            for info in self.zip.infolist():
                if info.is_dir():
                    continue
                mode = info.external_attr >> 16
                if mode and (mode & 0o170000) not in (0, 0o100000):  # a link, device, fifo…
                    raise BundleRefused(f"{info.filename}: not a regular file")
                if info.filename in self.sizes:
                    raise BundleRefused(f"{info.filename}: two entries of this name (one would be verified, "
                                        "the other extracted)")
                self.sizes[info.filename] = info.file_size
        else:
            for p in sorted(path.rglob("*")):
                name = p.relative_to(path).as_posix()
                if p.is_symlink() or (not p.is_dir() and not p.is_file()):
                    raise BundleRefused(f"{name}: not a regular file")
                if p.is_file():
                    self.sizes[name] = p.stat().st_size

    def names(self) -> list[str]:
        return list(self.sizes)

    def exists(self, name: str) -> bool:
        return name in self.sizes

    def open(self, name: str) -> IO[bytes]:
        return self.zip.open(name) if self.zip is not None else (self.path / name).open("rb")

    def read(self, name: str, limit: int | None = None) -> bytes:
        """The whole file; `BundleRefused` when it is larger than `limit`."""
        if limit is not None and self.sizes[name] > limit:
            raise BundleRefused(f"{name}: {self.sizes[name]} bytes, more than {limit} allowed")
        with self.open(name) as f:
            data = f.read() if limit is None else f.read(limit + 1)
        if limit is not None and len(data) > limit:
            raise BundleRefused(f"{name}: more than {limit} bytes")
        return data

    def lines(self, name: str) -> Iterator[bytes]:
        with self.open(name) as f:
            for line in f:
                if line.strip():
                    yield line


def message_text(doc: dict[str, Any]) -> str:
    """Every human-readable string of a message record's content (text, captions, replies, …)."""
    out: list[str] = []

    def walk(msg: Any) -> None:
        if not isinstance(msg, dict):
            return
        t = msg.get("type")
        body = msg.get(t) if isinstance(t, str) else None
        if isinstance(body, dict):
            for k in ("body", "caption", "filename", "title", "description", "text", "name", "address", "emoji"):
                if isinstance(body.get(k), str):
                    out.append(body[k])
            for k in ("button_reply", "list_reply", "nfm_reply"):
                if isinstance(body.get(k), dict):
                    out.extend(v for v in (body[k].get("title"), body[k].get("description"), body[k].get("body"))
                               if isinstance(v, str))
            if isinstance(body.get("message"), dict):  # an edit carries the new version
                walk(body["message"])
        if isinstance(msg.get("contacts"), list):
            out.extend(c.get("name", {}).get("formatted_name", "") for c in msg["contacts"] if isinstance(c, dict))

    walk(doc.get("message"))
    request = doc.get("request")  # a Cloud API send from the send log
    if isinstance(request, dict):
        walk(request)
        template = request.get("template")
        if isinstance(template, dict):
            out.append(str(template.get("name", "")))
            for comp in template.get("components") or []:
                for prm in comp.get("parameters") or [] if isinstance(comp, dict) else []:
                    if isinstance(prm, dict) and isinstance(prm.get("text"), str):
                        out.append(prm["text"])
    return "\n".join(s for s in out if s)


ERASED, DISPOSED = "[content erased]", "[content disposed after retention]"


def shown_text(content: Any) -> str:
    """The text a production shows for a record's content: its RSMF event body, its lines in the
    extracted text, its transcript entry. One definition, used by the exporter and by this verifier."""
    if isinstance(content, dict) and (content.get("erased") or content.get("disposed")):
        return ERASED if content.get("erased") else DISPOSED
    return message_text(content) if isinstance(content, dict) else ""


def open_sealed(record: dict[str, Any], key: bytes) -> Any:
    """A sealed record's content, decrypted with its disclosed key, as a production lists it.

    Raises:
        ValueError: the key does not open the ciphertext (wrong key, or not this record's).
    """
    aad = f"strongroom.content/1|{record['stream']}|{record['natural_key']}".encode()
    try:
        plain = AESGCM(key).decrypt(base64.b64decode(record["nonce"], validate=True),
                                    base64.b64decode(record["content"], validate=True), aad)
    except InvalidTag as e:
        raise ValueError("the disclosed content key does not open the sealed ciphertext") from e
    try:
        return json.loads(plain)
    except ValueError:
        return {"raw_base64": base64.b64encode(plain).decode()}


def _digest(value: Any) -> bytes:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
                          .encode("utf-8", "surrogatepass")).digest()[:16]


def _raw_digest(value: Any) -> bytes:
    """Of the content's JSON as the exporter writes it (keys in sealed order, compact)."""
    return _str_digest(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def _str_digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:16]


def _text_digest(text: str) -> bytes:
    return hashlib.sha256(text.replace("\r\n", "\n").encode("utf-8", "surrogatepass")).digest()[:16]


def _withheld(content: Any) -> bool:
    """Content a production may list for a record whose key it does not disclose."""
    return content is None or content in ({"erased": True}, {"disposed": True})


# -- C2SP checkpoints (signed notes) and RFC 9162 consistency --------------------------------------

ED25519, ECDSA, COSIGNATURE_V1 = 0x01, 0x02, 0x04
DASH = "\u2014 "  # em dash and space: the start of a note's signature line


def _raw_key(pk: PublicKey) -> bytes:
    """A public key's bytes: Ed25519's 32 (RFC 8032); an ECDSA key's DER SubjectPublicKeyInfo."""
    if isinstance(pk, Ed25519PublicKey):
        return pk.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return pk.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def decode_key(raw: bytes) -> PublicKey:
    """The inverse of `_raw_key`: 32 bytes are Ed25519, anything else must be a P-256 SPKI.

    Raises:
        ValueError: neither.
    """
    if len(raw) == 32:
        return Ed25519PublicKey.from_public_bytes(raw)
    try:
        key = load_der_public_key(raw)
    except UnsupportedAlgorithm as e:  # (not a ValueError: a caller catching those would crash)
        raise ValueError("a signing key is Ed25519 or ECDSA P-256") from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("a signing key is Ed25519 or ECDSA P-256")
    return key


def verify_signature(pk: PublicKey, signature: bytes, data: bytes) -> None:
    """Check `signature` over `data` by `pk` (Ed25519, or DER ECDSA P-256 over SHA-256).

    Raises:
        InvalidSignature: it does not verify.
    """
    if isinstance(pk, Ed25519PublicKey):
        pk.verify(signature, data)
    else:
        pk.verify(signature, data, ec.ECDSA(hashes.SHA256()))


def note_kind(key: PublicKey) -> int:
    """The C2SP signed-note signature type of the archive's key (0x01 Ed25519, 0x02 ECDSA)."""
    return ED25519 if isinstance(key, Ed25519PublicKey) else ECDSA


def key_hash(name: str, key: PublicKey, kind: int | None = None) -> bytes:
    """The C2SP note key ID: SHA-256(name ‖ LF ‖ type ‖ key)[:4]; for ECDSA (type 0x02, as
    github.com/transparency-dev/witness has it) SHA-256 of the DER SPKI alone."""
    kind = note_kind(key) if kind is None else kind
    if kind == ECDSA:
        return hashlib.sha256(_raw_key(key)).digest()[:4]
    return hashlib.sha256(name.encode() + b"\n" + bytes([kind]) + _raw_key(key)).digest()[:4]


def parse_vkey(text: str) -> tuple[str, int, PublicKey]:
    """(name, signature type, public key) of a verifier key. Raises `ValueError`."""
    try:
        name, hash_hex, b64 = text.strip().split("+", 2)  # a key name holds no "+"; base64 may
        raw = base64.b64decode(b64, validate=True)
        kind, key = raw[0], decode_key(raw[1:])
    except (ValueError, IndexError) as e:
        raise ValueError(f"not a verifier key: {text[:60]!r}") from e
    if kind != note_kind(key) and not (kind == COSIGNATURE_V1 and isinstance(key, Ed25519PublicKey)):
        raise ValueError(f"verifier key {name!r}: signature type {kind:#04x} does not fit its key")
    if key_hash(name, key, kind).hex() != hash_hex:
        raise ValueError(f"verifier key {name!r}: its key hash does not match its key")
    return name, kind, key


def parse_witness(text: str) -> tuple[str, Ed25519PublicKey]:
    """(name, key) of a witness's verifier key: an Ed25519 key (cosignature/v1). Raises `ValueError`."""
    name, _kind, key = parse_vkey(text)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"witness key {name!r}: a cosignature/v1 witness key is Ed25519")
    return name, key


@dataclass(frozen=True)
class NoteCheckpoint:
    origin: str
    tree_size: int
    root: bytes
    cosigned_by: tuple[str, ...]  # the witnesses (of those given) whose cosignature verified


def verify_note(note: str, name: str, key: PublicKey,
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
        verify_signature(key, ours, text.encode())
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


def verify_note_by_any(note: str, name: str, keys: list[PublicKey],
                       witnesses: Sequence[tuple[str, Ed25519PublicKey]] = ()) -> NoteCheckpoint:
    """`verify_note` under whichever of the archive's keys (its key history) signed it.

    Raises:
        ValueError: signed by none of them (the last key's reason), or a witness's cosignature missing.
    """
    error = ValueError("no key to check the note with")
    for key in keys:
        try:
            return verify_note(note, name, key, witnesses)
        except ValueError as e:
            error = e
    raise error


def consistent(size1: int, size2: int, proof: list[bytes], root1: bytes, root2: bytes) -> bool:
    """RFC 9162 §2.1.4.2: does `proof` show the tree of `size1`/`root1` is a prefix of `size2`/`root2`?"""
    if size1 == size2:
        return size1 > 0 and not proof and root1 == root2
    if not 0 < size1 < size2 or not proof:
        return False
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # a power of two: the first tree's root is a node of the second
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = _node(c, fr), _node(c, sr)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = _node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == root1 and sr == root2


ROTATION_ORIGIN = "strongroom.key-rotation/1"
EVIDENCE_KINDS = ("consent", "template_ledger")  # their extracts (ledgers/) are compared key-order-free


class KeyHistory:
    """The archive's signing keys over time, from its rotation statements.

    A rotation statement names the old key and the new one and the time the old one retires; it
    is signed by both (``old_signature``, ``new_signature`` over its RFC 8785 bytes), so the chain
    of statements links every key of the archive's life to the one a verifier was given (its
    `anchor`, any key of the chain). A signature by a key is accepted only if it claims a time
    before that key's retirement.
    """

    def __init__(self, anchor: PublicKey, statements: list[bytes] | None = None) -> None:
        self.keys: dict[str, PublicKey] = {}
        self.retired: dict[str, str] = {}  # key id -> the time it retired (ISO-8601 UTC)
        self.statements: list[dict[str, Any]] = []
        chain: list[dict[str, Any]] = []
        for raw in statements or []:
            doc = json.loads(raw)
            st = doc["statement"]
            if st.get("origin") != ROTATION_ORIGIN:
                raise ValueError("not a key rotation statement")
            old = decode_key(base64.b64decode(st["old_key"], validate=True))
            new = decode_key(base64.b64decode(st["new_key"], validate=True))
            if _key_id(old) != st["old_key_id"] or _key_id(new) != st["new_key_id"]:
                raise ValueError(f"rotation {st.get('sequence')}: key ids do not match the keys")
            try:
                verify_signature(old, base64.b64decode(doc["old_signature"]), _canonical(st))
                verify_signature(new, base64.b64decode(doc["new_signature"]), _canonical(st))
            except InvalidSignature as e:
                raise ValueError(f"rotation {st.get('sequence')}: not signed by both keys") from e
            chain.append({**st, "_old": old, "_new": new})
        chain.sort(key=lambda st: st["sequence"])
        for i, st in enumerate(chain):
            if st["sequence"] != i + 1 or (i and st["old_key_id"] != chain[i - 1]["new_key_id"]):
                raise ValueError(f"rotation statements do not chain at sequence {i + 1}")
            if i and st["time"] <= chain[i - 1]["time"]:
                raise ValueError(f"rotation {i + 1} is not later than rotation {i}")
            self.keys[st["old_key_id"]], self.keys[st["new_key_id"]] = st["_old"], st["_new"]
            self.retired[st["old_key_id"]] = st["time"]
            self.statements.append({k: v for k, v in st.items() if not k.startswith("_")})
        if not chain:
            self.keys[_key_id(anchor)] = anchor
        elif self.keys.get(_key_id(anchor)) is None or _raw_key(self.keys[_key_id(anchor)]) != _raw_key(anchor):
            raise ValueError("the public key given is not one of the keys these rotation statements link")
        self.current_id = chain[-1]["new_key_id"] if chain else _key_id(anchor)

    @property
    def current(self) -> PublicKey:
        return self.keys[self.current_id]

    def key_for(self, key_id: str, signed_at: str | None) -> PublicKey:
        """The key `key_id`, if a signature it made at `signed_at` is acceptable.

        Raises:
            ValueError: an unknown key, or a retired key's signature claiming a time after its retirement.
        """
        key = self.keys.get(key_id)
        if key is None:
            raise ValueError(f"signed by key {key_id}, which is not in the archive's key history")
        retired = self.retired.get(key_id)
        if retired is not None and (signed_at is None or str(signed_at) >= retired):
            raise ValueError(f"signed by key {key_id} at {signed_at}, after its retirement at {retired}")
        return key


def _json_lines(src: _Source, path: str, failures: list[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file; a line that is not one is a failure, and skipped."""
    for i, line in enumerate(src.lines(path), start=1):
        try:
            doc = json.loads(line)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            failures.append(f"{path}: line {i} is not a JSON object")
            continue
        yield doc


def _count(src: _Source, path: str) -> int | None:
    """Records in a file by its kind (None: not countable here)."""
    if path.endswith(".jsonl"):
        return sum(1 for _ in src.lines(path))
    if path.endswith(".dat") or path.endswith(".opt"):  # one record per CRLF line (DAT: after its header)
        with src.open(path) as fh:
            lines = sum(chunk.count(b"\r\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
        return lines - 1 if path.endswith(".dat") else lines
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            return None
        with src.open(path) as fh:
            return int(pq.ParquetFile(fh).metadata.num_rows)
    if path.endswith(".json"):
        return len(json.loads(src.read(path)).get("reports", []))
    return None


def _key_id(pk: PublicKey) -> str:
    """The id signatures name their key by: SHA-256 of `_raw_key`, 16 hex digits."""
    return hashlib.sha256(_raw_key(pk)).hexdigest()[:16]


def _canonical(doc: dict[str, Any]) -> bytes:
    try:
        import rfc8785

        return rfc8785.dumps(doc)
    except ImportError:  # the checkpoint holds only ASCII strings and integers: sorted compact JSON is RFC 8785
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_inclusion(index: int, size: int, leaf_hash: bytes, path: list[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2."""
    if index >= size:
        raise ValueError(f"leaf index {index} outside tree size {size}")
    fn, sn, r = index, size - 1, leaf_hash
    for p in path:
        if sn == 0:
            raise ValueError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = _node(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("inclusion proof is too short")
    return r


def _bound(rec: dict[str, Any]) -> bytes:
    """What binds a listed record to its sealed one: its metadata fields and sent time."""
    t = rec.get("event_time")
    when = datetime.fromisoformat(str(t).replace("Z", "+00:00")).isoformat() if t is not None else None
    return hashlib.sha256(json.dumps([rec.get(f) for f in BOUND_FIELDS] + [when]).encode()).digest()[:16]


def record_key(rid: Any) -> tuple[str, int] | None:
    """(stream, seq) of a record id as productions write it (``<stream>/<seq>``), or None."""
    stream, _, seq = str(rid).rpartition("/")
    return (stream, int(seq)) if stream and seq.isdigit() else None


def _key(stream: Any, seq: Any) -> tuple[str, int] | None:
    if isinstance(stream, str) and isinstance(seq, int) and not isinstance(seq, bool):
        return stream, seq
    return None


def _batches(items: Iterator[Any], n: int = 2000) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


class Sealed(NamedTuple):
    """What was proven of one record: digests of its sealed metadata, of its decrypted content and of
    the text a production shows for it (None: no key disclosed), and a media record's native SHA-256."""

    bound: bytes | None  # None: disposed after retention (proven by its leaf hash only)
    content: bytes | None
    text: bytes | None
    native: str | None
    content_raw: bytes | None = None  # of the content as the exporter writes it (records.parquet's column)


_IN = 500
_GET_MANY = ("SELECT seq, bound, content, text, native, content_raw FROM proven WHERE stream = ? AND seq IN "
             f"({','.join('?' * _IN)})")


class _Proven:
    """The records whose inclusion proof verified, with digests of what was sealed: kept in a
    throw-away SQLite file (digests only, never content), so a bundle of any size verifies in the
    same memory."""

    def __init__(self, path: str | None = None) -> None:
        """A new store in a private temporary directory, or (`path`) a sealed one, read only (the
        helper process that checks the renderings)."""
        self._dir = None if path is not None else tempfile.TemporaryDirectory(prefix="verify-bundle-")
        self._pending: list[tuple[str, int, bytes | None, bytes | None, bytes | None, str | None, bytes | None]] = []
        if path is not None:
            self.path = path
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            self.mdb = self.db
            return
        assert self._dir is not None
        self.path = str(Path(self._dir.name) / "proven.sqlite")
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; BEGIN;"
                              "CREATE TABLE proven (stream TEXT, seq INTEGER, bound BLOB, content BLOB, text BLOB,"
                              " native TEXT, content_raw BLOB, PRIMARY KEY (stream, seq)) WITHOUT ROWID;"
                              "CREATE TABLE natives (sha256 TEXT PRIMARY KEY) WITHOUT ROWID;")
        # written while the helper reads the other file: no lock between them
        self.mdb = sqlite3.connect(str(Path(self._dir.name) / "messages.sqlite"), isolation_level=None)
        self.mdb.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; BEGIN;"
                               "CREATE TABLE messages (stream TEXT, day TEXT, wamid TEXT,"
                               " PRIMARY KEY (stream, day, wamid)) WITHOUT ROWID;")

    def seal(self) -> None:
        """Every proof is in: commit, so a helper process can read the proven records."""
        if self._pending:
            self._flush()
        self.db.execute("COMMIT")

    def add(self, stream: str, seq: int, sealed: Sealed) -> None:
        self._pending.append((stream, seq, *sealed))
        if len(self._pending) >= 10_000:
            self._flush()

    def _flush(self) -> None:
        self.db.executemany("INSERT OR REPLACE INTO proven VALUES (?, ?, ?, ?, ?, ?, ?)", self._pending)
        self.db.executemany("INSERT OR IGNORE INTO natives VALUES (?)", [(p[5],) for p in self._pending if p[5]])
        self._pending.clear()

    def get(self, stream: Any, seq: Any) -> Sealed | None:
        """What was proven of a record; None when no inclusion proof verified for it."""
        if self._pending:
            self._flush()
        if not isinstance(stream, str) or not isinstance(seq, int) or isinstance(seq, bool):
            return None
        row = self.db.execute("SELECT bound, content, text, native, content_raw FROM proven WHERE stream = ? "
                              "AND seq = ?", (stream, seq)).fetchone()
        return Sealed(*row) if row is not None else None

    def get_many(self, keys: list[tuple[str, int] | None]) -> dict[tuple[str, int], Sealed]:
        """`get` for many records at once (one query per 900 of a stream, not one per record)."""
        if self._pending:
            self._flush()
        by_stream: dict[str, list[int]] = {}
        for k in keys:
            if k is not None:
                by_stream.setdefault(k[0], []).append(k[1])
        out: dict[tuple[str, int], Sealed] = {}
        for stream, seqs in by_stream.items():
            for i in range(0, len(seqs), _IN):
                chunk = seqs[i:i + _IN]
                chunk += [-1] * (_IN - len(chunk))  # one statement text, prepared once (no seq is -1)
                for seq, *row in self.db.execute(_GET_MANY, (stream, *chunk)):
                    out[(stream, seq)] = Sealed(*row)
        return out

    def by_id(self, rid: Any) -> Sealed | None:
        """`get` for a record id as productions write it: ``<stream>/<seq>``."""
        k = record_key(rid)
        return self.get(*k) if k is not None else None

    def add_messages(self, recs: list[dict[str, Any]]) -> None:
        """Conversation messages of records.jsonl, by number and UTC day (what a completeness report
        lists); a record whose time does not parse is left out (its fields are checked elsewhere)."""
        rows = []
        for rec in recs:
            when = rec.get("event_time") or rec.get("received_at")
            if rec.get("kind") == "message" and rec.get("conversation") and isinstance(rec.get("wamid"), str) \
                    and isinstance(rec.get("stream"), str) and isinstance(when, str):
                try:
                    day = datetime.fromisoformat(when.replace("Z", "+00:00")).astimezone(UTC).date().isoformat()
                except ValueError:
                    continue
                rows.append((rec["stream"], day, rec["wamid"]))
        self.mdb.executemany("INSERT OR IGNORE INTO messages VALUES (?, ?, ?)", rows)

    def messages(self, stream: str, day: str) -> set[str]:
        return {w for (w,) in self.mdb.execute("SELECT wamid FROM messages WHERE stream = ? AND day = ?",
                                               (stream, day))}

    def is_native(self, sha256: str) -> bool:
        if self._pending:
            self._flush()
        return self.db.execute("SELECT 1 FROM natives WHERE sha256 = ?", (sha256,)).fetchone() is not None

    def close(self) -> None:
        self.db.close()
        self.mdb.close()
        if self._dir is not None:
            self._dir.cleanup()


@dataclass
class Latest:
    """Checkpoints an outside holder keeps (C2SP notes), to check a bundle's snapshot against."""

    notes: list[str]
    log_origin: str
    proofs: list[dict[str, Any]]  # {"stream", "from_size", "to_size", "proof": [hex]} from the archive
    witnesses: list[tuple[str, Ed25519PublicKey]]


def verify(bundle: Path, public_key: PublicKey, tsa_roots: list[Any] | None = None,
           latest: Latest | None = None) -> list[str]:
    """Every failure found, each naming the file or record; empty when the bundle verifies.

    `tsa_roots` (x509 certificates of trusted TSAs or their CAs): the archive head's RFC 3161
    tokens must verify against them, and at least one must be there. `latest`: each holder's
    checkpoint must be consistent with the bundle's snapshot (RFC 9162, with the proofs given)."""
    proven = _Proven()
    try:
        return _verify(bundle, public_key, proven, tsa_roots, latest)
    except (BundleRefused, zipfile.BadZipFile) as e:
        return [f"bundle refused: {e}"]
    finally:
        proven.close()


def _verify(bundle: Path, public_key: PublicKey, proven: _Proven, tsa_roots: list[Any] | None = None,
            latest: Latest | None = None) -> list[str]:
    src = _Source(bundle)
    failures: list[str] = []
    if not src.exists("manifest.json") or not src.exists("manifest.sig"):
        return ["manifest.json or manifest.sig: missing"]
    data = src.read("manifest.json", MAX_MANIFEST)
    try:  # the key history (rotation statements, each signed by both its keys) links the key given to
        # the keys that signed the manifest and the checkpoints
        history = KeyHistory(public_key, [json.dumps(st).encode() for st in json.loads(
            src.read(ROTATIONS, MAX_MANIFEST))] if src.exists(ROTATIONS) else [])
    except Exception as e:
        return [f"{ROTATIONS}: the key history does not verify ({type(e).__name__}: {e})"]
    try:
        claimed = json.loads(data)
        signer = history.key_for(str(claimed.get("key_id")), claimed.get("produced_at_utc"))
        verify_signature(signer, base64.b64decode(src.read("manifest.sig", 1024).strip(), validate=True), data)
    except (InvalidSignature, ValueError, AttributeError):
        return ["manifest.json: signature does not verify with this public key or its key history "
                "(manifest edited or wrong key)"]
    manifest = claimed

    # 2. files: read only those of the listed size, and never past it
    listed = {f["path"]: f for f in manifest["files"]}
    intact: set[str] = set()
    for path, f in sorted(listed.items()):
        if not src.exists(path):
            failures.append(f"{path}: missing")
            continue
        if src.sizes[path] != f["size"]:
            failures.append(f"{path}: content differs from the manifest (size {src.sizes[path]} vs {f['size']})")
            continue
        h, size = hashlib.sha256(), 0
        with src.open(path) as fh:
            while size <= f["size"] and (chunk := fh.read(min(1 << 20, f["size"] + 1 - size))):
                h.update(chunk)
                size += len(chunk)
        if size != f["size"] or h.hexdigest() != f["sha256"]:
            failures.append(f"{path}: content differs from the manifest (size {size} vs {f['size']}, SHA-256)")
            continue
        intact.add(path)
    for name in sorted(set(src.names()) - set(listed) - ALLOWED_EXTRA):
        failures.append(f"{name}: not listed in the manifest")

    # 3. counts (of the files that are what the manifest says: nothing else is parsed)
    for path, f in sorted(listed.items()):
        if "records" not in f or path not in intact:
            continue
        try:
            n = _count(src, path)
        except Exception as e:  # a damaged file is a finding, never a crash
            failures.append(f"{path}: unreadable ({type(e).__name__})")
            continue
        if n is not None and n != f["records"]:
            failures.append(f"{path}: holds {n} records, the manifest says {f['records']}")

    # 4. checkpoints
    roots: dict[str, tuple[int, bytes]] = {}
    for stream, snap in sorted(manifest.get("snapshot", {}).items()):
        name = snap["checkpoint"]
        try:
            if name not in intact:
                raise ValueError("not a file of the bundle whose hash verified")
            doc = json.loads(src.read(name))
            cp = doc["checkpoint"]
            if cp.get("origin") not in CHECKPOINT_ORIGINS:
                raise ValueError("foreign origin")
            verify_signature(history.key_for(cp.get("key_id"), cp.get("time")),
                             base64.b64decode(doc["signature"]), _canonical(cp))
            if cp["stream"] != stream or cp["tree_size"] != snap["tree_size"]:
                raise ValueError("checkpoint is for another stream or size")
            roots[stream] = (cp["tree_size"], bytes.fromhex(cp["root_hash"]))
        except Exception as e:  # malformed, foreign, edited: all the same finding
            failures.append(f"{name}: checkpoint does not verify ({type(e).__name__}: {e})")

    failures += _head_failures(src, manifest, intact, history, roots, tsa_roots)
    if latest is not None:
        failures += _latest_failures(roots, history, latest)

    # 5. records and their proofs: inclusion here, the sealed content opened in the helper
    helper = _Helper()
    try:
        return _verify_records(src, bundle, listed, intact, roots, manifest, proven, helper, failures)
    finally:
        helper.close()


def _verify_records(src: _Source, bundle: Path, listed: dict[str, Any], intact: set[str],
                    roots: dict[str, tuple[int, bytes]], manifest: dict[str, Any], proven: _Proven,
                    helper: _Helper, failures: list[str]) -> list[str]:
    pending: list[tuple[list[tuple[str, int, str]], Any]] = []

    def collect(keep: int) -> None:
        while len(pending) > keep:
            keys, future = pending.pop(0)
            for (stream, seq, where), got in zip(keys, future.result(), strict=True):
                if isinstance(got, str):
                    failures.append(f"{where}: {got}")
                else:
                    proven.add(stream, seq, got)

    keys: list[tuple[str, int, str]] = []
    items: list[tuple[bytes | None, dict[str, Any]]] = []
    for path in sorted(p for p in listed if p.startswith("proofs/") and p.endswith(".jsonl")):
        if path not in intact:
            continue
        for pr in _json_lines(src, path, failures):
            where = f"{path}: record {pr.get('stream')}/{pr.get('seq')}"
            try:
                stream, seq = pr["stream"], int(pr["seq"])
                size, root = roots[stream]
                leaf = bytes.fromhex(pr["leaf_hash"])
                raw = None
                if pr.get("sealed_record") is not None:
                    raw = base64.b64decode(pr["sealed_record"], validate=True)
                    if hashlib.sha256(b"\x00" + raw).digest() != leaf:
                        raise ValueError("sealed record does not hash to its leaf")
                if pr["tree_size"] != size or root_from_inclusion(seq, size, leaf, [bytes.fromhex(h) for h in
                                                                                    pr["path"]]) != root:
                    raise ValueError("inclusion proof does not lead to the signed checkpoint root")
            except Exception as e:
                failures.append(f"{where}: {type(e).__name__}: {e}")
                continue
            keys.append((stream, seq, where))
            items.append((raw, {k: pr[k] for k in ("content_key",) if k in pr}))
            if len(items) >= 2000:
                pending.append((keys, helper.submit(_sealed_batch, items)))
                keys, items = [], []
                collect(keep=2)  # at most two batches in flight
    if items:
        pending.append((keys, helper.submit(_sealed_batch, items)))
    collect(keep=0)
    proven.seal()
    renderings = helper.submit(_renderings_of, str(bundle), listed, intact, proven.path) \
        if helper.pool is not None else _Done(_renderings, src, listed, intact, proven)
    n_records = n_messages = 0
    if "records/records.jsonl" in intact:
        for batch in _batches(_json_lines(src, "records/records.jsonl", failures)):
            proven.add_messages(batch)
            found = proven.get_many([_key(r.get("stream"), r.get("seq")) for r in batch])
            for rec in batch:
                n_records += 1
                n_messages += rec.get("kind") == "message" and rec.get("role") == "message"
                k = _key(rec.get("stream"), rec.get("seq"))
                failures += _record_failures(rec, found.get(k) if k is not None else None)
    failures += _evidence_failures(src, intact, proven, manifest)
    failures += _review_failures(src, intact, proven)
    failures += renderings.result()
    counts = manifest.get("counts", {})
    if counts.get("records") != n_records:
        failures.append(f"manifest.json: counts.records is {counts.get('records')}, records.jsonl has {n_records}")
    if counts.get("messages") != n_messages:
        failures.append(f"manifest.json: counts.messages is {counts.get('messages')}, records.jsonl has {n_messages}")
    return failures


def list_digest(values: list[str]) -> str:
    """The commitment a completeness report makes to a sorted list of wamids."""
    return hashlib.sha256("".join(v + "\n" for v in values).encode()).hexdigest()


def _whole_day(scope: dict[str, Any], day: str) -> bool:
    """Does the bundle's scope hold every conversation message of `day` (no query, no conversation
    list, the time range covering the day)?"""
    if scope.get("query") or scope.get("conversations"):
        return False
    lo = datetime.fromisoformat(day + "T00:00:00+00:00")
    hi = datetime.fromisoformat(day + "T23:59:59.999999+00:00")
    start, end = scope.get("start"), scope.get("end")
    return (start is None or datetime.fromisoformat(start) <= lo) and (end is None or datetime.fromisoformat(end) > hi)


def _extract_failures(path: str, entry: dict[str, Any], proven: _Proven,
                      beside: tuple[str, ...] = ("record", "natural_key")) -> list[str]:
    """A report, ledger entry or trail entry: its sealed record proven, and (unless it is a
    redacted extract) its content the sealed record's; `beside`: the entry's fields that are not
    the sealed content (its record id, and the record's key)."""
    rest = {k: v for k, v in entry.items() if k not in beside}
    rid = entry.get("record")
    sealed = proven.by_id(rid) if rid is not None else None
    if sealed is None:
        return [f"{path}: entry {rid or entry.get('natural_key')} has no verified inclusion proof"]
    if sealed.content_raw is None and (entry.get("redacted") is True or rest == {"erased": True}):
        return []  # a tenant's extract, or an erased subject's entry: the sealed record exists, no key disclosed
    if sealed.content is None:
        return [f"{path}: entry {rid}: no content key disclosed for it"]
    return [] if _digest(rest) == sealed.content else [f"{path}: entry {rid}: differs from its sealed record"]


def _evidence_failures(src: _Source, intact: set[str], proven: _Proven, manifest: dict[str, Any]) -> list[str]:
    """Reports, ledgers and the access trail are sealed records; each completeness report is
    recomputed: its committed wamid lists, and (for a day the scope holds whole) every message it
    says was archived present in the bundle."""
    failures: list[str] = []
    path = "reports/completeness.json"
    try:
        reports = json.loads(src.read(path)).get("reports", []) if path in intact else []
    except (ValueError, AttributeError) as e:
        failures.append(f"{path}: unreadable ({type(e).__name__})")
        reports = []
    for rep in reports:
        if not isinstance(rep, dict) or not isinstance(rep.get("day"), str):
            failures.append(f"{path}: a report that is not an object with a day")
            continue
        failures += _extract_failures(path, rep, proven)
        rid = rep.get("record")
        for name in ("archived", "referenced"):
            if rep.get(f"{name}_sha256") != list_digest(rep.get(f"{name}_wamids") or []):
                failures.append(f"{path}: report {rid}: its {name}_wamids do not give its {name}_sha256")
        if _whole_day(manifest.get("scope") or {}, rep["day"]):
            found = proven.messages(str(rep.get("stream")), rep["day"])
            missing = sorted(set(rep.get("archived_wamids") or []) - found)
            if missing:
                failures.append(f"{path}: report {rid}: {len(missing)} message(s) it found archived on "
                                f"{rep['day']} are not in the bundle (first {missing[0]})")
    for path in ("ledgers/consent.jsonl", "ledgers/templates.jsonl", "audit/access_trail.jsonl"):
        if path not in intact:
            continue
        for entry in _json_lines(src, path, failures):
            failures += _extract_failures(path, entry, proven)
    return failures


def _instant(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


def sample_draw(seed: str, label: str, stream: str, natural_key: str) -> float:
    """A message's draw in [0, 1) for a policy version `label` (name@version)."""
    h = hashlib.sha256("\x1f".join((seed, label, stream, natural_key)).encode()).digest()
    return int.from_bytes(h, "big") / 2**256


def _covers(doc: dict[str, Any], rec: dict[str, Any]) -> bool:
    """Whether a policy document's population holds a record (tenants, numbers, directions, origins)."""
    pop = doc.get("population") or {}
    return ((not pop.get("tenants") or rec.get("tenant") in pop["tenants"])
            and (not pop.get("numbers") or rec.get("stream") in pop["numbers"])
            and rec.get("direction") in (pop.get("directions") or ("inbound", "outbound"))
            and (rec.get("origin") or "api") in (pop.get("origins") or ("api", "app", "history", "agent")))


def _review_failures(src: _Source, intact: set[str], proven: _Proven) -> list[str]:
    """Supervision, recomputed: every entry of review/evidence.jsonl a proven sealed record; every
    revealed seed the one committed (SHA-256) before its month; every message of the bundle drawn
    by a policy version under a revealed seed has a review item of that policy, and every item
    that says it was sampled was drawn. (Lexicon flags are the archive's judgement, kept sealed:
    the bundle shows them; only the draw is a pure function an examiner recomputes.)"""
    path, sampling_path = "review/evidence.jsonl", "review/sampling.json"
    if path not in intact or sampling_path not in intact:
        return []
    failures: list[str] = []
    versions: dict[str, list[tuple[datetime, int, dict[str, Any]]]] = {}
    committed: dict[tuple[str, str], str] = {}
    items: dict[tuple[str, str, str], dict[str, Any]] = {}
    for entry in _json_lines(src, path, failures):
        is_item = "action" not in entry  # a review item's sealed content; its natural_key is the message's
        failures += _extract_failures(path, entry, proven, ("record",) if is_item else ("record", "natural_key"))
        details: dict[str, Any] = entry["details"] if isinstance(entry.get("details"), dict) else {}
        if is_item:
            items[(str(entry.get("policy")), str(entry.get("stream")), str(entry.get("natural_key")))] = entry
        elif entry.get("action") == "review.policy" and isinstance(details.get("document"), dict):
            at = _instant(entry.get("at"))
            if at is not None and details.get("sha256") == hashlib.sha256(_canonical(details["document"])).hexdigest():
                versions.setdefault(str(details.get("policy")), []).append((at, int(details.get("version", 0)),
                                                                            details["document"]))
            else:
                failures.append(f"{path}: policy version {details.get('policy')}@{details.get('version')}: its "
                                "document does not give its SHA-256")
        elif entry.get("action") == "review.seed":
            committed[(str(details.get("policy")), str(details.get("month")))] = str(details.get("seed_sha256"))
    try:
        sampling = json.loads(src.read(sampling_path))
        seeds = {(str(x["policy"]), str(x["month"])): str(x["seed"]) for x in sampling.get("seeds", [])}
        pending = set(sampling.get("not_yet_considered") or [])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return failures + [f"{sampling_path}: unreadable ({type(e).__name__})"]
    for (policy, month), seed in sorted(seeds.items()):
        if policy not in versions:
            continue  # (a seed of a policy this bundle has no version of: nothing to recompute with it)
        if committed.get((policy, month)) != hashlib.sha256(seed.encode()).hexdigest():
            failures.append(f"{sampling_path}: the seed of {policy} for {month} is not the one committed "
                            "(review.seed) on the audit stream")
    for v in versions.values():
        v.sort(key=lambda x: x[1])
    if "records/records.jsonl" not in intact:
        return failures
    for rec in _json_lines(src, "records/records.jsonl", failures):
        sent = _instant(rec.get("event_time") or rec.get("received_at"))
        if rec.get("kind") != "message" or rec.get("id") in pending or _withheld(rec.get("content")) or sent is None:
            continue
        stream, key = str(rec.get("stream")), str(rec.get("natural_key"))
        for name, vs in versions.items():
            at, version, doc = vs[0]
            for v_at, v_version, v_doc in vs[1:]:
                if v_at <= sent:
                    at, version, doc = v_at, v_version, v_doc
            item = items.get((name, stream, key))
            found = seeds.get((name, sent.strftime("%Y-%m")))
            if found is None:
                continue  # the month has not ended: its seed is still withheld
            seed = found
            if item is not None and item.get("reason") == "sample":
                label = f"{name}@{item.get('policy_version')}"
                rate = next((d.get("sample_rate", 0) for _, n, d in vs if n == item.get("policy_version")), None)
                if rate is None or sample_draw(seed, label, stream, key) >= rate:
                    failures.append(f"{path}: item of {rec.get('id')} under {label} says it was sampled, but its "
                                    "draw is not below the rate")
            if item is None and _covers(doc, rec) \
                    and sample_draw(seed, f"{name}@{version}", stream, key) < float(doc.get("sample_rate", 0)):
                failures.append(f"{path}: {rec.get('id')} was drawn by {name}@{version} but has no review item")
    return failures


def _sealed(record: dict[str, Any] | None, pr: dict[str, Any]) -> Sealed:
    """Digests of a proven record (`record`: its sealed JSON, None when disposed) and its content,
    opened with the key its proof line discloses."""
    if "content_key" not in pr:
        raise ValueError("no content_key beside the proof: the content cannot be checked against the seal")
    if record is None:
        return Sealed(None, None, None, None)
    content = text = native = raw = None
    if pr["content_key"] is not None:
        value = open_sealed(record, base64.b64decode(pr["content_key"], validate=True))
        raw = _raw_digest(value)  # what records.jsonl and records.parquet are compared with
        kind = record.get("kind")
        if kind == "message":  # what RSMF events and transcripts show
            text = _text_digest(shown_text(value))
        elif kind == "media" and isinstance(value, dict) and isinstance(value.get("sha256"), str):
            native = value["sha256"]
        elif record.get("stream") == "audit" or kind in EVIDENCE_KINDS:  # extracts, key order not kept
            content = _digest(value)
    return Sealed(_bound(record), content, text, native, raw)


def _record_failures(rec: dict[str, Any], sealed: Sealed | None) -> list[str]:
    """A record of records.jsonl against what was proven of it: content and sealed metadata."""
    where = f"records/records.jsonl: record {rec.get('id')}"
    if sealed is None:
        return [f"{where} has no verified inclusion proof"]
    failures = _content_failures("records/records.jsonl", rec.get("id"), rec.get("content"), sealed)
    if sealed.bound is None:
        return failures  # disposed after retention: existence is proven, content is listed as withheld
    try:
        same = _bound(rec) == sealed.bound
    except (ValueError, TypeError):
        same = False
    if not same:
        failures.append(f"{where} differs from its sealed record (fields {', '.join(BOUND_FIELDS)}, event_time)")
    return failures


def _content_failures(path: str, rid: Any, content: Any, sealed: Sealed) -> list[str]:
    if sealed.content_raw is None:
        if not _withheld(content):
            return [f"{path}: record {rid} lists content its bundle discloses no key for (only withheld content "
                    "may be listed without one)"]
        return []
    try:  # listed as the exporter writes it: the sealed JSON's keys in their order
        same = _raw_digest(content) == sealed.content_raw
    except (TypeError, ValueError):
        same = False
    return [] if same else [f"{path}: record {rid}: content differs from its sealed record (decrypted with the "
                            "disclosed key)"]


def _text_failures(path: str, rid: Any, text: Any, sealed: Sealed | None) -> list[str]:
    if sealed is None:
        return [f"{path}: record {rid} is shown but has no verified inclusion proof"]
    if not isinstance(text, str):
        return [f"{path}: record {rid}: no text"]
    if sealed.text is None:
        return [] if text in (ERASED, DISPOSED, "") else [
            f"{path}: record {rid} shows text its bundle discloses no key for"]
    return [] if _text_digest(text) == sealed.text else [
        f"{path}: record {rid}: text differs from its sealed record (decrypted with the disclosed key)"]


_PRE = re.compile(r"<pre\b([^>]*)>(.*?)</pre\s*>", re.IGNORECASE | re.DOTALL)
_RECORD_ATTR = re.compile(r"""\bdata-record\s*=\s*(?:'([^']*)'|"([^"]*)")""", re.IGNORECASE)


def transcript_bodies(html: str) -> list[tuple[str, str]]:
    """(record id, text) of every ``<pre>`` of a transcript: where the exporter writes message
    bodies, each naming its sealed record (one without a record id is a finding). The rest of the
    page is presentation (names, times, badges) and is not checked. The exporter escapes every
    body, so a body never holds ``</pre>``; a hand-edited page that hides one in a comment only
    makes a check fail, never pass."""
    out = []
    for attrs, body in _PRE.findall(html):
        m = _RECORD_ATTR.search(attrs)
        rid = unescape(m.group(1) if m.group(1) is not None else m.group(2)) if m else "(none)"
        out.append((rid, unescape(body)))
    return out


_BOUNDARY = re.compile(rb'^content-type:\s*multipart/mixed;\s*boundary="?([^"\r\n;]+)"?', re.IGNORECASE | re.MULTILINE)


def _mime_parts(data: bytes) -> list[tuple[dict[str, str], bytes]]:
    """(headers, decoded body) of each part of a one-level multipart/mixed message (RFC 2046): an
    RSMF native as RFC 5322 frames it. Raises ValueError on anything else."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    m = _BOUNDARY.search(head) if sep else None
    if m is None:
        raise ValueError("not a multipart/mixed message")
    delimiter = b"--" + m.group(1)
    chunks = rest.split(b"\r\n" + delimiter)
    if not chunks[0].startswith(delimiter) or not chunks[-1].startswith(b"--"):
        raise ValueError("malformed multipart body")
    parts = []
    for chunk in [chunks[0][len(delimiter):]] + chunks[1:-1]:
        raw_headers, sep, body = chunk.lstrip(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("a part without a blank line after its headers")
        headers = {}
        for line in raw_headers.decode("ascii").split("\r\n"):
            name, colon, value = line.partition(":")
            if not colon:
                raise ValueError(f"malformed part header {line[:40]!r}")
            headers[name.strip().lower()] = value.strip()
        encoding = headers.get("content-transfer-encoding", "7bit").lower()
        if encoding == "base64":
            body = binascii.a2b_base64(body)
        elif encoding == "quoted-printable":
            body = binascii.a2b_qp(body)
        parts.append((headers, body))
    return parts


def _rsmf_parts(data: bytes) -> tuple[str, dict[str, Any], dict[str, bytes]]:
    """(the text part, rsmf_manifest.json, the other files of rsmf.zip) of an RSMF native."""
    text, zipped = None, None
    for headers, body in _mime_parts(data):
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "text/plain" and text is None:
            text = body.decode("utf-8")
        elif 'filename="rsmf.zip"' in headers.get("content-disposition", ""):
            zipped = body
    if text is None or zipped is None:
        raise ValueError("no text part or no rsmf.zip")
    with zipfile.ZipFile(io.BytesIO(zipped)) as z:
        files = {n: z.read(n) for n in z.namelist()}
    return text, json.loads(files.pop("rsmf_manifest.json")), files


def _rsmf_text(manifest: dict[str, Any]) -> str:
    """An RSMF's extracted text as the exporter writes it, from its manifest's events."""
    people = {p["id"]: p.get("display", "") for p in manifest.get("participants", [])}
    lines = []
    for ev in manifest.get("events", []):
        who = "" if ev.get("type") != "message" else people.get(ev.get("participant"), "")
        lines.append(f"{who}\n{ev.get('timestamp') or ''}\n{ev.get('body', '')}\n")
    return "\n".join(lines)


def _dat_rows(src: _Source, path: str) -> Iterator[dict[str, str]]:
    with src.open(path) as fh:
        text = fh.read().decode("utf-8-sig")
    rows = [line.split("\x14") for line in text.split("\r\n") if line]
    header = [c.strip("\u00fe") for c in rows[0]]
    for row in rows[1:]:
        yield dict(zip(header, (c.strip("\u00fe") for c in row), strict=True))


def _renderings_of(bundle: str, listed: dict[str, Any], intact: set[str], proven_path: str) -> list[str]:
    """`_renderings` in a helper process, over the sealed store of proven records."""
    proven = _Proven(proven_path)
    try:
        return _renderings(_Source(Path(bundle)), listed, intact, proven)
    finally:
        proven.close()


class _Done:
    """A finished computation, in the shape of a future (the inline path of `_Helper`)."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._value = fn(*args)

    def result(self) -> Any:
        return self._value


class _Helper:
    """A second process for the heavy checks (decrypting sealed records, the renderings), so both
    CPUs of a small machine work; everything runs inline on one CPU or where no process can be
    started."""

    def __init__(self) -> None:
        self.pool: Any = None
        if (os.cpu_count() or 1) > 1:
            try:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
            except (OSError, RuntimeError, ImportError):
                self.pool = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.pool is not None:
            try:
                return self.pool.submit(fn, *args)
            except RuntimeError:  # the pool broke: go on inline
                self.pool = None
        return _Done(fn, *args)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def _sealed_batch(items: list[tuple[bytes | None, dict[str, Any]]]) -> list[Sealed | str]:
    """`_sealed` for a batch of proof lines (in the helper process): each Sealed, or why not."""
    out: list[Sealed | str] = []
    for raw, pr in items:
        try:
            out.append(_sealed(json.loads(raw) if raw is not None else None, pr))
        except Exception as e:
            out.append(f"{type(e).__name__}: {e}")
    return out


def _parquet_failures(pq: Any, src: _Source, proven: _Proven) -> list[str]:
    failures = []
    with src.open("records/records.parquet") as fh:
        for batch in pq.ParquetFile(fh).iter_batches(columns=["id", "stream", "seq", "content_json"]):
            rows = list(zip(*(batch.column(i).to_pylist() for i in range(4)), strict=True))
            found = proven.get_many([_key(stream, seq) for _, stream, seq, _ in rows])
            for rid, stream, seq, cj in rows:
                sealed = found.get((stream, seq))
                if sealed is None:
                    failures.append(f"records/records.parquet: record {rid} has no verified inclusion proof")
                elif sealed.content_raw is None or cj is None:  # withheld: the column must say so
                    try:
                        content = json.loads(cj) if cj is not None else None
                    except ValueError:
                        content = cj
                    failures += _content_failures("records/records.parquet", rid, content, sealed)
                elif not isinstance(cj, str) or _str_digest(cj) != sealed.content_raw:
                    failures.append(f"records/records.parquet: record {rid}: content differs from its sealed "
                                    "record (decrypted with the disclosed key)")
    return failures


def _renderings(src: _Source, listed: dict[str, Any], intact: set[str], proven: _Proven) -> list[str]:
    """Every rendering of a record's content equal to the sealed content: records.parquet, the RSMF
    events and text parts, the extracted text, the transcripts; every native a sealed media record's."""
    failures: list[str] = []
    if "records/records.parquet" in intact:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            pq = None  # without pyarrow, records.parquet is checked by its hash only (same rows as the JSONL)
        if pq is not None:
            try:
                failures += _parquet_failures(pq, src, proven)
            except Exception as e:  # a damaged file is a finding, never a crash
                failures.append(f"records/records.parquet: unreadable ({type(e).__name__}: {e})")
    checked_natives: set[str] = set()
    for path in sorted(p for p in intact if p.endswith(".dat")):
        try:
            for row in _dat_rows(src, path):
                if not row.get("PARENT_BATES"):
                    continue
                native = row["NATIVEPATH"].removeprefix(".\\").replace("\\", "/")
                sealed = proven.by_id(row["RECORD_IDS"])
                checked_natives.add(native)
                if sealed is None or sealed.native is None:
                    failures.append(f"{native}: attachment of record {row['RECORD_IDS']!r}, which is not a proven "
                                    "media record with a disclosed key")
                elif native not in listed or listed[native]["sha256"] != sealed.native \
                        or row.get("SHA256HASH") != sealed.native:
                    failures.append(f"{native}: differs from sealed media record {row['RECORD_IDS']} (SHA-256)")
        except Exception as e:
            failures.append(f"{path}: unreadable ({type(e).__name__}: {e})")
    for path in sorted(p for p in listed if "/NATIVES/" in p and not p.endswith(".rsmf")):
        if path not in checked_natives:
            failures.append(f"{path}: a native no DAT row ties to a sealed media record")
    for path in sorted(p for p in intact if p.endswith(".rsmf")):
        try:
            text, manifest, files = _rsmf_parts(src.read(path))
            shown = [(next((c.get("value") for c in ev.get("custom", []) if c.get("name") == "record"), None),
                      ev.get("body", "")) for ev in manifest.get("events", []) if ev.get("type") == "message"]
            found = proven.get_many([record_key(rid) for rid, _ in shown])
            for rid, body in shown:
                k = record_key(rid)
                failures += _text_failures(path, rid, body, found.get(k) if k is not None else None)
            expected = _rsmf_text(manifest)
            if _text_digest(text.replace("\r\n", "\n")) != _text_digest(expected):
                failures.append(f"{path}: its text part differs from its events")
            txt = path.replace("/NATIVES/", "/TEXT/", 1).removesuffix(".rsmf") + ".txt"
            if txt not in intact:
                failures.append(f"{txt}: the extracted text of {path} is missing")
            elif _text_digest(src.read(txt).decode("utf-8")) != _text_digest(expected):
                failures.append(f"{txt}: extracted text differs from the events of {path}")
            for name, data in sorted(files.items()):
                if not proven.is_native(hashlib.sha256(data).hexdigest()):
                    failures.append(f"{path}: rsmf.zip member {name} is no sealed media record's file (SHA-256)")
        except Exception as e:
            failures.append(f"{path}: unreadable RSMF ({type(e).__name__}: {e})")
    for path in sorted(p for p in intact if p.startswith("transcripts/") and p.endswith(".html")):
        try:
            bodies = transcript_bodies(src.read(path).decode("utf-8"))
        except Exception as e:
            failures.append(f"{path}: unreadable ({type(e).__name__}: {e})")
            continue
        found = proven.get_many([record_key(rid) for rid, _ in bodies])
        for rid, text in bodies:
            k = record_key(rid)
            failures += _text_failures(path, rid, text, found.get(k) if k is not None else None)
    return failures


def _latest_failures(roots: dict[str, tuple[int, bytes]], history: KeyHistory, latest: Latest) -> list[str]:
    """Each holder's checkpoint: signed by a key of the archive (and cosigned by every witness
    given), for a stream of the bundle, and consistent with the bundle's snapshot of it."""
    failures = []
    for i, text in enumerate(latest.notes, start=1):
        try:
            note = verify_note_by_any(text, latest.log_origin, list(history.keys.values()), latest.witnesses)
        except ValueError as e:
            failures.append(f"latest #{i}: the holder's checkpoint does not verify ({e})")
            continue
        prefix = latest.log_origin + "/"
        stream = note.origin[len(prefix):] if note.origin.startswith(prefix) else None
        where = f"latest #{i} ({note.origin} @ {note.tree_size})"
        if stream not in roots:
            failures.append(f"{where}: the bundle holds no snapshot of stream {stream}")
            continue
        size, root = roots[stream]
        if note.tree_size == size:
            if note.root != root:
                failures.append(f"{where}: the holder's root differs from the bundle's at the same size (a fork)")
            continue
        lo, hi = sorted((note.tree_size, size))
        lo_root, hi_root = (note.root, root) if note.tree_size < size else (root, note.root)
        proof = next((p for p in latest.proofs if p.get("stream") == stream and p.get("from_size") == lo
                      and p.get("to_size") == hi), None)
        if proof is None:
            failures.append(f"{where}: no consistency proof between {lo} and {hi} given (ask the archive: "
                            f"strongroom proof consistency --stream {stream} --from {lo} --to {hi})")
        elif not consistent(lo, hi, [bytes.fromhex(h) for h in proof.get("proof", [])], lo_root, hi_root):
            failures.append(f"{where}: the bundle's snapshot ({size}) is not consistent with the holder's checkpoint")
    return failures


def _head_failures(src: _Source, manifest: dict[str, Any], intact: set[str], history: KeyHistory,
                   roots: dict[str, tuple[int, bytes]], tsa_roots: list[Any] | None) -> list[str]:
    """The archive head of the snapshot: signed by the archive, naming each snapshot checkpoint,
    and stamped by a trusted TSA (when `tsa_roots` are given)."""
    doc = manifest.get("head")
    if doc is None:
        return ["manifest.json: no archive head (a bundle from before heads; give it no --tsa-cert)"] if tsa_roots \
            else []
    path = doc.get("path")
    if path not in intact:
        return [f"{path}: the archive head is not a file of the bundle whose hash verified"]
    data = src.read(path)
    failures = []
    try:
        signed = json.loads(data)
        head, sig = signed["head"], base64.b64decode(signed["signature"], validate=True)
        if head.get("origin") != HEAD_ORIGIN:
            raise ValueError("foreign origin")
        verify_signature(history.key_for(head.get("key_id"), head.get("time")), sig, _canonical(head))
    except Exception as e:
        return [f"{path}: archive head does not verify ({type(e).__name__}: {e})"]
    for stream, (size, root) in sorted(roots.items()):
        entry = head["streams"].get(stream) or {}
        if entry.get("tree_size") != size or entry.get("root_hash") != root.hex():
            failures.append(f"{path}: names stream {stream} at {entry.get('tree_size')} records, the snapshot "
                            f"checkpoint at {size}")
    if tsa_roots is None:
        return failures
    try:
        import rfc3161_client  # noqa: F401 - `check_token` needs it
    except ImportError:
        return failures + ["timestamps: checking them needs the rfc3161-client package (pip install rfc3161-client)"]
    good = 0
    for token in doc.get("timestamps", []):
        if token not in intact:
            failures.append(f"{token}: not a file of the bundle whose hash verified")
            continue
        try:
            check_token(src.read(token), data, tsa_roots)
            good += 1
        except Exception as e:
            failures.append(f"{token}: timestamp does not verify ({e})")
    if not good:
        failures.append(f"{path}: no timestamp from the given TSAs")
    return failures


@dataclass(frozen=True)
class Stamp:
    tsa: str  # the TSA certificate's subject
    time: datetime


def check_token(der: bytes, data: bytes, roots: list[Any]) -> Stamp:
    """Verify one RFC 3161 token (a DER TimeStampResp) over `data` against the given TSA roots
    (x509 certificates). Needs the `rfc3161-client` package.

    Raises:
        ValueError: malformed, for other data, or from a TSA none of `roots` vouches for.
    """
    from cryptography import x509
    from rfc3161_client import VerificationError, VerifierBuilder, decode_timestamp_response

    try:
        resp = decode_timestamp_response(der)
    except ValueError as e:
        raise ValueError(f"not an RFC 3161 response: {e}") from e
    if hashlib.sha256(data).digest() != resp.tst_info.message_imprint.message:
        raise ValueError("the token stamps other data (its message imprint is not this object's SHA-256)")
    errors = []
    for root in roots:
        try:
            VerifierBuilder().add_root_certificate(root).build().verify_message(resp, data)
        except VerificationError as e:
            errors.append(str(e)[:120])
            continue
        leaf = next((x509.load_der_x509_certificate(c) for c in resp.signed_data.certificates), None)
        return Stamp(leaf.subject.rfc4514_string() if leaf else root.subject.rfc4514_string(), resp.tst_info.gen_time)
    raise ValueError("from a TSA none of the given certificates vouches for" + (f" ({errors[0]})" if errors else ""))


def load_public_key(pem: bytes) -> PublicKey:
    """The archive's public key from PEM: Ed25519, or ECDSA P-256 (a key in AWS KMS). Raises `ValueError`."""
    key = load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise ValueError("not an Ed25519 or ECDSA P-256 public key")
    return decode_key(_raw_key(key))


def load_certificates(paths: list[str]) -> list[Any]:
    from cryptography import x509

    return [c for p in paths for c in x509.load_pem_x509_certificates(Path(p).read_bytes())]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="verify_bundle.py", description="Verify a strongroom bundle offline.")
    parser.add_argument("bundle", help="bundle directory or zip")
    parser.add_argument("public_key", help="the archive's public key (PEM)")
    parser.add_argument("--tsa-cert", action="append", default=None,
                        help="PEM certificate of a trusted TSA or its CA (repeatable)")
    parser.add_argument("--latest", action="append", default=[],
                        help="a checkpoint note an outside holder keeps (C2SP tlog-checkpoint; repeatable)")
    parser.add_argument("--consistency", action="append", default=[],
                        help="an RFC 9162 consistency proof from the archive (JSON; repeatable)")
    parser.add_argument("--log-origin", help="the origin the notes' lines begin with")
    parser.add_argument("--witness", action="append", default=[],
                        help="a witness's verifier key: every --latest note must carry its cosignature")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.latest and not args.log_origin:
        parser.error("--latest needs --log-origin")
    latest = Latest([Path(n).read_text() for n in args.latest], args.log_origin,
                    [json.loads(Path(c).read_text()) for c in args.consistency],
                    [parse_witness(w) for w in args.witness]) if args.latest else None
    failures = verify(Path(args.bundle), load_public_key(Path(args.public_key).read_bytes()),
                      load_certificates(args.tsa_cert) if args.tsa_cert else None, latest)
    for f in failures:
        print(f"FAIL {f}")
    print("bundle verifies" if not failures else f"{len(failures)} failure(s)")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
