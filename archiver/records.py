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

from archiver.errors import InvalidInput

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
    "ref_wamid": ("str", pa.string()),
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

_MAX_SAFE_INT = 2**53 - 1
# JSON string escaping exactly as json.dumps(ensure_ascii=False): `"`, `\`, and U+0000–U+001F
# (as \b \f \n \r \t or lowercase \u00XX), everything else as UTF-8: RFC 8785 §3.2.2.2.
_escape = json.encoder.encode_basestring


def format_ts(value: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (always microseconds, always UTC)."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"{value!r} is not a UTC-aware datetime; all record times are")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_instant(value: str) -> datetime:
    """An ISO-8601 instant given by a person (``Z`` or an offset required), as UTC.

    Raises:
        ValueError: not ISO-8601, or no time zone (a bare time would be read in someone's zone).
    """
    try:
        t = datetime.fromisoformat(value)
    except ValueError as e:
        raise ValueError(f"not an ISO-8601 date or time: {value!r}") from e
    if t.tzinfo is None:
        raise ValueError(f"give a time zone (e.g. {value}Z or {value}+01:00)")
    try:
        return t.astimezone(UTC)
    except OverflowError as e:  # 9999-12-31T23:59-01:00 is in year 10000 in UTC
        raise ValueError(f"{value!r} is outside the years 1 to 9999 in UTC") from e


def parse_instant_arg(value: str | None, name: str) -> datetime | None:
    """`parse_instant` for an optional argument a front end received: `InvalidInput` naming it."""
    if value is None:
        return None
    try:
        return parse_instant(value)
    except ValueError as e:
        raise InvalidInput(f"{name}: {e}") from e


def _json_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return _escape(value)


def _json_int(value: Any) -> str:
    if not isinstance(value, int) or isinstance(value, bool) or abs(value) > _MAX_SAFE_INT:
        raise ValueError(f"{value!r} is outside the canonical integer domain")
    return str(value)


def _json_bool(value: Any) -> str:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not a boolean")
    return "true" if value else "false"


def _json_ts(value: Any) -> str:
    return '"' + format_ts(value) + '"'


def _json_b64(value: Any) -> str:
    return '"' + base64.b64encode(value).decode("ascii") + '"'


def _json_hex(value: Any) -> str:
    return '"' + bytes(value).hex() + '"'


_JSON = {"str": _json_str, "int": _json_int, "bool": _json_bool, "ts": _json_ts, "bytes": _json_b64, "hex": _json_hex}
_SORTED = sorted(CANONICAL_COLUMNS)  # RFC 8785 orders keys by UTF-16 code units; ours are ASCII
_SPLIT = _SORTED.index("prev_hash")


def canonical_parts(columns: dict[str, list[Any]]) -> list[tuple[str, str]]:
    """For each row, the canonical JSON text before and after its `prev_hash` value.

    Columnar: each column is encoded in one pass, a few microseconds per row for a whole
    segment; the chain then splices each row's `prev_hash` in, in order (`join_canonical`).
    A record is a flat object with ASCII keys and string, integer (within ±(2^53 - 1)),
    boolean or null values (times, hashes and binary are first encoded to strings). For that
    domain, C-level JSON string escaping with sorted keys is exactly RFC 8785; the tests
    check it against `rfc8785.dumps`, which stays in use for arbitrary JSON (`canonical_json`).
    """
    n = len(next(iter(columns.values()))) if columns else 0
    encoded = []
    for i, name in enumerate(_SORTED):
        if name == "prev_hash":
            continue
        enc = _JSON[COLUMNS[name][0]]
        values = columns.get(name) or [None] * n
        if len(values) != n:
            raise ValueError(f"column {name} has {len(values)} values, expected {n}")
        key = ("{" if i == 0 else ",") + '"' + name + '":'
        encoded.append([key + ("null" if v is None else enc(v)) for v in values])
    before, after = encoded[:_SPLIT], encoded[_SPLIT:]
    rows_before, rows_after = zip(*before, strict=True), zip(*after, strict=True)
    return [("".join(h) + ',"prev_hash":', "".join(t) + "}") for h, t in zip(rows_before, rows_after, strict=True)]


def join_canonical(part: tuple[str, str], prev_hash: bytes | None) -> bytes:
    """The canonical bytes of a row from its `canonical_parts` entry and its `prev_hash`."""
    value = "null" if prev_hash is None else '"' + bytes(prev_hash).hex() + '"'
    return (part[0] + value + part[1]).encode("utf-8")


def canonical(record: dict[str, Any]) -> bytes:
    """RFC 8785 bytes of one record (every column but `record_hash`)."""
    part = canonical_parts({name: [record.get(name)] for name in CANONICAL_COLUMNS})[0]
    return join_canonical(part, record.get("prev_hash"))


def canonical_json(value: Any) -> bytes:
    """RFC 8785 bytes of any JSON value (floats included)."""
    return rfc8785.dumps(value)


def link(prev_hash: bytes, canonical_bytes: bytes) -> bytes:
    """One step of the hash chain: SHA-256(prev ‖ canonical)."""
    return hashlib.sha256(prev_hash + canonical_bytes).digest()


def content_aad(stream: str, natural_key: str) -> bytes:
    """Associated data binding a ciphertext to the record it belongs to."""
    return f"strongroom.content/1|{stream}|{natural_key}".encode()
