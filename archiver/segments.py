"""Parquet segments: a contiguous run of sealed records of one stream, plus file metadata."""

from __future__ import annotations

import io
import json
from collections.abc import Collection, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from archiver.records import ARROW_SCHEMA, SCHEMA_VERSION, canonical_parts, join_canonical

META_KEY = b"strongroom"


def segment_key(stream: str, date: str, first_seq: int, last_seq: int) -> str:
    return f"records/stream={stream}/date={date}/seg-{first_seq:012d}-{last_seq:012d}.parquet"


def checkpoint_key(stream: str, last_seq: int) -> str:
    return f"checkpoints/stream={stream}/{last_seq:012d}.json"


def encode_segment(records: list[dict[str, Any]], meta: dict[str, Any]) -> bytes:
    return encode_columns({name: [r.get(name) for r in records] for name in ARROW_SCHEMA.names}, meta)


def encode_columns(columns: dict[str, list[Any]], meta: dict[str, Any]) -> bytes:
    table = pa.Table.from_pydict({n: columns[n] for n in ARROW_SCHEMA.names}, schema=ARROW_SCHEMA)
    doc = {"schema": SCHEMA_VERSION, **meta}
    table = table.replace_schema_metadata({META_KEY: json.dumps(doc, sort_keys=True).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", write_statistics=True)
    return buf.getvalue()


def decode_segment(data: bytes) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Records (as row dicts) and metadata of a segment. Raises `ValueError` if malformed."""
    columns, meta = decode_columns(data)
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)], meta


def sealed_records(data: bytes, seqs: Collection[int], batch_rows: int = 2048) -> Iterator[tuple[int, bytes]]:
    """(seq, canonical sealed bytes — what the leaf hash covers) of the records `seqs` of a
    segment, in segment order. Read in batches of rows, only the wanted ones decoded to Python,
    the canonical JSON built column by column: memory stays small whatever the segment's size."""
    try:
        f = pq.ParquetFile(io.BytesIO(data))
        _check(f.schema_arrow)
        wanted = pa.array(sorted(seqs), pa.int64())
        for batch in f.iter_batches(batch_size=batch_rows, columns=ARROW_SCHEMA.names):
            batch = batch.filter(pc.is_in(batch.column("seq"), value_set=wanted))
            if batch.num_rows == 0:
                continue
            columns = {name: batch.column(name).to_pylist() for name in ARROW_SCHEMA.names}
            parts = canonical_parts(columns)
            yield from ((seq, join_canonical(part, prev))
                        for seq, part, prev in zip(columns["seq"], parts, columns["prev_hash"], strict=True))
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"not a readable Parquet file: {e}") from e


def decode_columns(data: bytes) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """Columns and metadata of a segment. Raises `ValueError` on anything malformed."""
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"not a readable Parquet file: {e}") from e
    meta = _check(table.schema)
    return {name: table.column(name).to_pylist() for name in ARROW_SCHEMA.names}, meta


def _check(schema: pa.Schema) -> dict[str, Any]:
    """The strongroom metadata of a segment's schema; `ValueError` if absent or columns are missing."""
    raw_meta = (schema.metadata or {}).get(META_KEY)
    if raw_meta is None:
        raise ValueError("Parquet file carries no strongroom metadata")
    missing = set(ARROW_SCHEMA.names) - set(schema.names)
    if missing:
        raise ValueError(f"segment lacks columns {sorted(missing)}")
    try:
        meta = json.loads(raw_meta)
    except ValueError as e:
        raise ValueError(f"segment metadata is not JSON: {e}") from e
    if not isinstance(meta, dict):
        raise ValueError("segment metadata is not a JSON object")
    return meta
