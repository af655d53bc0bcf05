"""The sealed record: its columns, its canonical bytes and its place in the hash chain.

A record's canonical form is RFC 8785 JSON over every column except `record_hash`, with
timestamps as ISO-8601 UTC strings (microseconds, ``Z``), hashes as lowercase hex and
binary values as standard base64. The same bytes feed both the hash chain

    h[n] = SHA-256(h[n-1] ‖ canonical(record n))         (h[-1] = GENESIS)

and the stream's RFC 6962 Merkle tree (leaf n = SHA-256(0x00 ‖ canonical(record n))).
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import rfc8785

GENESIS = bytes(32)
SCHEMA_VERSION = "strongroom.record/1"

# name -> (canonical encoding, pyarrow type). Order is the Parquet column order.
COLUMNS: dict[str, tuple[str, pa.DataType]] = {
    "stream": ("str", pa.string()),
    "seq": ("int", pa.int64()),
    "kind": ("str", pa.string()),
    "natural_key": ("str", pa.string()),
    "tenant": ("str", pa.string()),
    "field": ("str", pa.string()),
    "wamid": ("str", pa.string()),
    "conversation": ("str", pa.string()),
    "direction": ("str", pa.string()),
    "origin": ("str", pa.string()),
    "sender": ("str", pa.string()),
    "recipient": ("str", pa.string()),
    "type": ("str", pa.string()),
    "status": ("str", pa.string()),
    "template_name": ("str", pa.string()),
    "template_language": ("str", pa.string()),
    "event_time": ("ts", pa.timestamp("us", tz="UTC")),
    "received_at": ("ts", pa.timestamp("us", tz="UTC")),
    "modelled": ("bool", pa.bool_()),
    "envelope_sha256": ("str", pa.string()),
    "subject_key_id": ("str", pa.string()),
    "nonce": ("bytes", pa.binary()),
    "content": ("bytes", pa.binary()),
    "prev_hash": ("hex", pa.binary(32)),
    "record_hash": ("hex", pa.binary(32)),
}
CANONICAL_COLUMNS = [c for c in COLUMNS if c != "record_hash"]
ARROW_SCHEMA = pa.schema([pa.field(n, t, nullable=True) for n, (_, t) in COLUMNS.items()])


def format_ts(value: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (always microseconds, always UTC)."""
    if value.tzinfo is None:
        raise ValueError("naive datetime in a record; all record times are UTC-aware")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _hex(value: bytes) -> str:
    return bytes(value).hex()


def _int(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or abs(value) > _MAX_SAFE_INT:
        raise ValueError(f"{value!r} is outside the canonical integer domain")
    return value


def _str(value: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return value


def _bool(value: bool) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not a boolean")
    return value


_MAX_SAFE_INT = 2**53 - 1
_ENCODE = {"ts": format_ts, "bytes": _b64, "hex": _hex, "int": _int, "str": _str, "bool": _bool}


_CANONICAL_ENCODERS = [(name, _ENCODE[COLUMNS[name][0]]) for name in CANONICAL_COLUMNS]
_dumps = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False).encode


def canonical(record: dict[str, Any]) -> bytes:
    """RFC 8785 bytes of `record` (every column but `record_hash`).

    A record is a flat object with ASCII keys whose values are strings, integers within
    ±(2^53 - 1), booleans or null. For exactly that domain the C JSON encoder with sorted
    keys, compact separators and unescaped non-ASCII produces the RFC 8785 serialisation
    (tests check it against `rfc8785.dumps`), ~30x faster than the general implementation,
    which is kept for arbitrary content (`canonical_json`).
    """
    doc = {}
    for name, encode in _CANONICAL_ENCODERS:
        value = record.get(name)
        doc[name] = None if value is None else encode(value)
    return _dumps(doc).encode("utf-8")


def canonical_json(value: Any) -> bytes:
    """RFC 8785 bytes of any JSON value (floats included)."""
    return rfc8785.dumps(value)


def link(prev_hash: bytes, canonical_bytes: bytes) -> bytes:
    """One step of the hash chain: SHA-256(prev ‖ canonical)."""
    return hashlib.sha256(prev_hash + canonical_bytes).digest()


def content_aad(stream: str, natural_key: str) -> bytes:
    """Associated data binding a ciphertext to the record it belongs to."""
    return f"strongroom.content/1|{stream}|{natural_key}".encode()
