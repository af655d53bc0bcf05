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
    if value.tzinfo is None:
        raise ValueError("naive datetime in a record; all record times are UTC-aware")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _encode(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "ts":
        return format_ts(value)
    if kind == "bytes":
        return base64.b64encode(value).decode("ascii")
    if kind == "hex":
        return bytes(value).hex()
    return value


def canonical(record: dict[str, Any]) -> bytes:
    """RFC 8785 bytes of `record` (every column but `record_hash`)."""
    doc = {name: _encode(COLUMNS[name][0], record.get(name)) for name in CANONICAL_COLUMNS}
    return rfc8785.dumps(doc)


def link(prev_hash: bytes, canonical_bytes: bytes) -> bytes:
    """One step of the hash chain: SHA-256(prev ‖ canonical)."""
    return hashlib.sha256(prev_hash + canonical_bytes).digest()


def content_aad(stream: str, natural_key: str) -> bytes:
    """Associated data binding a ciphertext to the record it belongs to."""
    return f"strongroom.content/1|{stream}|{natural_key}".encode()
