"""The derived search index: an encrypted DuckDB database of message text, rebuildable from the archive.

Text search needs plaintext, so it lives here and nowhere else: a DuckDB database file
encrypted with AES-GCM (DuckDB's ``ENCRYPTION_KEY``, with the OpenSSL-backed crypto of the httpfs
wheel) under its own data key, wrapped by the KEK like every other key. It holds, per sealed
message record, its metadata, its text and its distinct terms, and is built incrementally from
sealed records (`update`), or from scratch (`rebuild`). When a subject is crypto-shredded their
documents are purged on the next update: the index never outlives an erasure.

`search` runs the reviewers' query language (`audit.searchlang`): positive terms prefilter
candidates through the terms table, metadata filters and tenants restrict in SQL, then every
candidate is evaluated exactly (phrases, proximity, wildcards, NOT) so counts are exact. Pages
are ordered by (event time, document id) with an opaque cursor, so paging is stable while new
messages arrive.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import sqlalchemy as sa

from archiver.db import data_keys, events
from archiver.errors import KeyDestroyedError
from archiver.keys import KeyRing
from archiver.kinds import MEDIA_TYPES
from archiver.sqlutil import as_utc
from audit.query import _sql_str, extension_path
from audit.searchlang import Bool, Node, Term, matches, parse, tokens

INDEX_KEY = "system:search-index"
SCHEMA = """
CREATE TABLE IF NOT EXISTS idx.docs (
    doc_id BIGINT PRIMARY KEY, stream VARCHAR, seq BIGINT, natural_key VARCHAR, tenant VARCHAR, wamid VARCHAR,
    conversation VARCHAR, direction VARCHAR, origin VARCHAR, sender VARCHAR, recipient VARCHAR, type VARCHAR,
    status VARCHAR, template_name VARCHAR, template_language VARCHAR, event_time TIMESTAMP,
    received_at TIMESTAMP, has_attachment BOOLEAN, subject_keys VARCHAR, text VARCHAR);  -- times: UTC
CREATE TABLE IF NOT EXISTS idx.terms (doc_id BIGINT, term VARCHAR);
CREATE TABLE IF NOT EXISTS idx.state (name VARCHAR PRIMARY KEY, value BIGINT);
"""
DOC_COLUMNS = ("doc_id", "stream", "seq", "natural_key", "tenant", "wamid", "conversation", "direction", "origin",
               "sender", "recipient", "type", "status", "template_name", "template_language", "event_time",
               "received_at", "has_attachment", "subject_keys", "text")
DOC_SCHEMA = pa.schema([(c, pa.int64() if c in ("doc_id", "seq") else pa.timestamp("us") if c.endswith(("_time", "_at"))
                         else pa.bool_() if c == "has_attachment" else pa.string()) for c in DOC_COLUMNS])


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


@dataclass
class Page:
    total: int
    items: list[dict[str, Any]] = field(default_factory=list)
    next_cursor: str | None = None
    query: str = ""  # the parsed tree, echoed


def _cursor(item: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps([item["event_time"] or "", item["doc_id"]]).encode()).decode()


def _uncursor(cursor: str) -> tuple[str, int]:
    try:
        t, doc_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return str(t), int(doc_id)
    except (ValueError, TypeError) as e:
        raise ValueError("not a cursor this index issued") from e


def _naive(t: datetime | None) -> datetime | None:
    """UTC without tzinfo, as the index stores times (no time-zone library involved)."""
    t = as_utc(t)
    return t.astimezone(UTC).replace(tzinfo=None) if t is not None else None


def _required_terms(node: Node) -> list[str]:
    """Plain words every match must contain (through ANDs only): the prefilter."""
    if isinstance(node, Term) and not node.wildcard:
        return list(node.words)
    if isinstance(node, Bool) and node.op == "AND":
        return [w for n in node.nodes for w in _required_terms(n)]
    return []


class SearchIndex:
    def __init__(self, path: Path, engine: sa.Engine, keyring: KeyRing) -> None:
        self.path = path
        self.engine = engine
        self.keyring = keyring
        self.caught_up = False

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
        try:
            con.execute(f"LOAD {_sql_str(str(extension_path()))}")  # OpenSSL crypto for encrypted files
            # spills to disk (large sorts) are encrypted too, and stay inside the index directory
            con.execute("SET temp_file_encryption = true")
            con.execute(f"SET temp_directory = {_sql_str(str(self.path.parent / 'tmp'))}")
            key = self.keyring.data_key(INDEX_KEY).hex()
            con.execute(f"ATTACH {_sql_str(str(self.path))} AS idx (ENCRYPTION_KEY {_sql_str(key)})")
            con.execute(SCHEMA)
            con.execute("SET enable_external_access = false")  # nothing but the attached index from here on
            con.execute("SET lock_configuration = true")
            yield con
            con.execute("CHECKPOINT idx")
        finally:
            con.close()

    # -- building -----------------------------------------------------------------------------

    def update(self, batch: int = 5000, max_batches: int | None = None) -> int:
        """Index sealed message records not yet indexed (at most `max_batches` batches, so a
        worker round stays short; `caught_up` says whether more remain); purge shredded subjects.
        Returns docs added."""
        added = 0
        self.caught_up = False
        with self.connect() as con:
            self._purge_shredded(con)
            for _ in itertools.count() if max_batches is None else range(max_batches):
                last = con.execute("SELECT coalesce(max(value), 0) FROM idx.state WHERE name = 'cursor'").fetchone()[0]
                with self.engine.connect() as conn:
                    rows = conn.execute(sa.select(events).where(
                        events.c.id > last, events.c.segment_id.is_not(None), events.c.kind == "message")
                        .order_by(events.c.id).limit(batch)).all()
                if not rows:
                    self.caught_up = True
                    return added
                docs, terms = [], []
                for r in rows:
                    doc = self._doc(r)
                    if doc is not None:
                        docs.append(doc)
                        terms += [(r.id, t) for t in sorted(set(tokens(doc[-1])))]
                con.execute("BEGIN")
                if docs:  # columnar inserts through Arrow: row-by-row executemany is far slower
                    con.register("new_docs", pa.table(list(zip(*docs, strict=True)), schema=DOC_SCHEMA))
                    con.execute("INSERT OR REPLACE INTO idx.docs SELECT * FROM new_docs")
                    con.unregister("new_docs")
                if terms:
                    con.register("new_terms", pa.table(list(zip(*terms, strict=True)), names=["doc_id", "term"]))
                    con.execute("INSERT INTO idx.terms SELECT * FROM new_terms")
                    con.unregister("new_terms")
                con.execute("INSERT OR REPLACE INTO idx.state VALUES ('cursor', ?)", [rows[-1].id])
                con.execute("COMMIT")
                added += len(docs)
        return added

    def _doc(self, r: sa.Row) -> tuple[Any, ...] | None:  # type: ignore[type-arg]
        if r.content is None:
            return None  # disposed, or about someone erased
        try:
            doc = json.loads(self.keyring.open_record(r))
        except KeyDestroyedError:
            return None
        return (r.id, r.stream, r.seq, r.natural_key, r.tenant, r.wamid, r.conversation, r.direction, r.origin,
                r.sender, r.recipient, r.type, r.status, r.template_name, r.template_language, _naive(r.event_time),
                _naive(r.received_at), r.type in MEDIA_TYPES, r.subject_key_id, message_text(doc))

    def _purge_shredded(self, con: duckdb.DuckDBPyConnection) -> int:
        with self.engine.connect() as conn:
            destroyed = conn.execute(sa.select(data_keys.c.key_id).where(data_keys.c.destroyed_at.is_not(None),
                                                                         data_keys.c.key_id.like("subj:%"))).scalars().all()
        gone = 0
        for key_id in destroyed:
            ids = [row[0] for row in con.execute("SELECT doc_id FROM idx.docs WHERE contains(subject_keys, ?)",
                                                 [key_id]).fetchall()]
            if ids:
                con.execute("DELETE FROM idx.terms WHERE doc_id IN (SELECT unnest(?))", [ids])
                con.execute("DELETE FROM idx.docs WHERE doc_id IN (SELECT unnest(?))", [ids])
                gone += len(ids)
        return gone

    def rebuild(self) -> int:
        """Throw the index away and build it again from the archive."""
        for p in (self.path, self.path.with_name(self.path.name + ".wal")):
            p.unlink(missing_ok=True)
        return self.update()

    # -- searching ----------------------------------------------------------------------------

    def search(self, query: str, tenants: set[str] | None = None, limit: int = 50, cursor: str | None = None,
               filters: dict[str, Any] | None = None, start: datetime | None = None,
               end: datetime | None = None) -> Page:
        """Exact matches of `query` (optionally within `tenants`, structured `filters` on doc
        columns and sent time in [start, end)), oldest first, `limit` per page from `cursor`."""
        tree = parse(query)
        where, params = ["TRUE"], []
        if tenants is not None:
            if not tenants:
                return Page(0, query=tree.describe())
            where.append(f"tenant IN ({', '.join('?' * len(tenants))})")
            params += sorted(tenants)
        for name, value in sorted((filters or {}).items()):
            if name not in DOC_COLUMNS or name in ("text", "subject_keys"):
                raise ValueError(f"unknown filter {name!r}")
            where.append(f"{name} = ?")
            params.append(value)
        for op, t in ((">=", start), ("<", end)):
            if t is not None:
                where.append(f"event_time {op} ?")
                params.append(_naive(t))
        for term in dict.fromkeys(_required_terms(tree)):
            where.append("doc_id IN (SELECT doc_id FROM idx.terms WHERE term = ?)")
            params.append(term)
        with self.connect() as con:
            rows = con.execute(f"SELECT * FROM idx.docs WHERE {' AND '.join(where)} ORDER BY event_time, doc_id",
                               params).fetchall()
        hits = []
        for row in rows:
            d = dict(zip(DOC_COLUMNS, row, strict=True))
            for col in ("event_time", "received_at"):
                d[col] = d[col].replace(tzinfo=UTC) if isinstance(d[col], datetime) else None
            fields = {"participant": [d["sender"], d["recipient"], d["conversation"]], "number": d["stream"],
                      "conversation": d["conversation"], "direction": d["direction"], "origin": d["origin"],
                      "type": d["type"], "template": d["template_name"], "status": d["status"],
                      "has": ["attachment"] if d["has_attachment"] else [], "sent": d["event_time"],
                      "archived": d["received_at"]}
            if matches(tree, d["text"] or "", fields):
                hits.append(d)
        for h in hits:
            h.pop("subject_keys")
            for col in ("event_time", "received_at"):
                h[col] = h[col].astimezone(UTC).isoformat() if isinstance(h[col], datetime) else None
        start = 0
        if cursor is not None:
            after = _uncursor(cursor)
            start = next((i for i, h in enumerate(hits) if (h["event_time"] or "", h["doc_id"]) > after), len(hits))
        page = hits[start:start + limit]
        more = start + limit < len(hits)
        return Page(len(hits), page, _cursor(page[-1]) if more and page else None, tree.describe())

