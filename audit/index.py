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
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import sqlalchemy as sa

from archiver.db import data_keys, events
from archiver.errors import InvalidInput, KeyDestroyedError
from archiver.keys import KeyRing
from archiver.kinds import MEDIA_TYPES
from archiver.sqlutil import Row, as_utc
from audit.query import _sql_str, extension_path
from audit.searchlang import DATE_FIELDS, Bool, Field, Near, Node, Not, QueryTooCostly, Term, matches, parse, tokens
from exporters.verify_bundle import message_text

INDEX_KEY = "system:search-index"
SCHEMA_VERSION = 3  # an index file of another version is rebuilt from the archive
SCHEMA = """
CREATE TABLE IF NOT EXISTS idx.docs (
    doc_id BIGINT PRIMARY KEY, stream VARCHAR, seq BIGINT, natural_key VARCHAR, tenant VARCHAR, wamid VARCHAR,
    conversation VARCHAR, direction VARCHAR, origin VARCHAR, sender VARCHAR, recipient VARCHAR, type VARCHAR,
    status VARCHAR, template_name VARCHAR, template_language VARCHAR, event_time TIMESTAMP,
    received_at TIMESTAMP, has_attachment BOOLEAN, subject_keys VARCHAR, text VARCHAR);  -- times: UTC
-- every word with its position (phrases, proximity), and 'p:'/'c:'/'n:' keys (pos -1) for the
-- participant, conversation and number fields; kept sorted by term, so a lookup reads few row groups
CREATE TABLE IF NOT EXISTS idx.terms (doc_id BIGINT, term VARCHAR, pos INTEGER);
CREATE TABLE IF NOT EXISTS idx.state (name VARCHAR PRIMARY KEY, value BIGINT);
"""
DOC_COLUMNS = ("doc_id", "stream", "seq", "natural_key", "tenant", "wamid", "conversation", "direction", "origin",
               "sender", "recipient", "type", "status", "template_name", "template_language", "event_time",
               "received_at", "has_attachment", "subject_keys", "text")
DOC_SCHEMA = pa.schema([(c, pa.int64() if c in ("doc_id", "seq") else pa.timestamp("us") if c.endswith(("_time", "_at"))
                         else pa.bool_() if c == "has_attachment" else pa.string()) for c in DOC_COLUMNS])


def doc_terms(doc: tuple[Any, ...]) -> list[tuple[int, str, int]]:
    """(doc_id, term, position) rows of a document tuple (DOC_COLUMNS order): its words, and keys
    for the fields that pick few documents out of many (casefolded like the query language)."""
    doc_id = doc[0]
    rows = [(doc_id, w, i) for i, w in enumerate(tokens(doc[-1] or ""))]
    for prefix, values in (("p:", (doc[9], doc[10], doc[6])), ("c:", (doc[6],)), ("n:", (doc[1],))):
        rows += [(doc_id, prefix + v, -1) for v in dict.fromkeys(str(x).casefold() for x in values if x is not None)]
    return rows


@dataclass
class Page:
    total: int
    items: list[dict[str, Any]] = field(default_factory=list)
    next_cursor: str | None = None
    query: str = ""  # the parsed tree, echoed


def _cursor(item: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps([item["event_time"] or "", item["doc_id"]]).encode()).decode()


def _uncursor(cursor: str) -> tuple[str, int]:
    """(sent time or "", doc id) of a cursor `_cursor` made; `InvalidInput` for anything else."""
    try:
        t, doc_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not isinstance(t, str) or not isinstance(doc_id, int) or not 0 <= doc_id < 2**63:
            raise ValueError("not (time, id)")
        if t:
            datetime.fromisoformat(t).astimezone(UTC)
        return t, doc_id
    except (ValueError, TypeError, OverflowError) as e:
        raise InvalidInput("not a cursor this index issued") from e


class _Users:
    """Who has the index file attached in this process: any number of searches at once, or one
    writer alone (the file is detached when the last leaves, so another process can take it)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.readers = 0
        self.writing = False


_INSTANCES: dict[Path, tuple[duckdb.DuckDBPyConnection, _Users]] = {}
_INSTANCES_LOCK = threading.Lock()
SEARCH_SECONDS = 10.0  # a search still running then is interrupted and refused (422)
MAX_EXPANSION = 2000  # distinct indexed words one wildcard may stand for
MAX_CANDIDATES = 200_000  # messages a proximity query may check word by word (in Python)


def _instance(directory: Path) -> tuple[duckdb.DuckDBPyConnection, _Users]:
    """One in-memory DuckDB per index directory and process, with the OpenSSL crypto loaded once
    (loading it costs ~50 ms) and file access confined to that directory."""
    with _INSTANCES_LOCK:
        if directory not in _INSTANCES:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            (directory / "tmp").mkdir(exist_ok=True, mode=0o700)
            con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
            con.execute(f"LOAD {_sql_str(str(extension_path()))}")  # OpenSSL crypto for encrypted files
            # spills to disk (large sorts) are encrypted too, and stay inside the index directory
            con.execute("SET temp_file_encryption = true")
            con.execute(f"SET temp_directory = {_sql_str(str(directory / 'tmp'))}")
            con.execute(f"SET allowed_directories = [{_sql_str(str(directory))}]")
            con.execute("SET enable_external_access = false")  # nothing outside the index directory
            con.execute("SET lock_configuration = true")
            _INSTANCES[directory] = (con, _Users())
        return _INSTANCES[directory]


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Any:
    """The value of a query that returns exactly one row (an aggregate without GROUP BY)."""
    row = con.execute(sql, params).fetchone()
    assert row is not None, sql
    return row[0]


def _naive(t: datetime | None) -> datetime | None:
    """UTC without tzinfo, as the index stores times (no time-zone library involved)."""
    t = as_utc(t)
    return t.astimezone(UTC).replace(tzinfo=None) if t is not None else None


def _required_terms(node: Node) -> list[str]:
    """Plain words every match must contain (through ANDs and proximity): the prefilter."""
    if isinstance(node, Term):  # its plain words (a phrase's, around any wildcard)
        return [w for w in node.words if not any(c in w for c in "*?=")]
    if isinstance(node, Bool) and node.op == "AND":
        return [w for n in node.nodes for w in _required_terms(n)]
    if isinstance(node, Near):  # both sides, unless it is `not w/N` (the right side must then be absent nearby)
        return _required_terms(node.left) + ([] if node.negated else _required_terms(node.right))
    return []


class SearchIndex:
    def __init__(self, path: Path, engine: sa.Engine, keyring: KeyRing) -> None:
        self.path = path
        self.engine = engine
        self.keyring = keyring
        self.caught_up = False

    def _attach(self, inst: duckdb.DuckDBPyConnection) -> None:
        key = self.keyring.data_key(INDEX_KEY).hex()
        con = inst.cursor()
        try:
            for attempt in itertools.count():  # another process may hold the file briefly
                try:
                    con.execute(f"ATTACH {_sql_str(str(self.path))} AS idx (ENCRYPTION_KEY {_sql_str(key)})")
                    break
                except duckdb.IOException as e:
                    if "lock" not in str(e).lower() or attempt >= 400:
                        raise
                    time.sleep(0.05)
            try:
                con.execute(SCHEMA)
                version = con.execute("SELECT value FROM idx.state WHERE name = 'schema'").fetchone()
                if version is None or version[0] != SCHEMA_VERSION:  # older layout: rebuilt from the archive
                    con.execute("DROP TABLE idx.docs; DROP TABLE idx.terms; DELETE FROM idx.state")
                    con.execute(SCHEMA)
                    con.execute("INSERT INTO idx.state VALUES ('schema', ?)", [SCHEMA_VERSION])
            except BaseException:
                con.execute("DETACH idx")
                raise
        finally:
            con.close()

    @staticmethod
    def _detach(inst: duckdb.DuckDBPyConnection) -> None:
        con = inst.cursor()
        try:
            con.execute("DETACH idx")
        finally:
            con.close()

    @contextmanager
    def connect(self, write: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor on the index, attached on this process's locked-down DuckDB instance and
        detached when its last user leaves (so another process, worker or CLI, can take the
        file). Searches (`write=False`) run side by side; a writer runs alone."""
        inst, users = _instance(self.path.parent)
        with users.cond:
            users.cond.wait_for(lambda: not users.writing and (not write or users.readers == 0))
            if users.readers == 0:
                self._attach(inst)
            if write:
                users.writing = True
            else:
                users.readers += 1
        con = inst.cursor()
        try:
            yield con
        finally:
            if write:
                try:  # a failed write must not leave its transaction (or the file) behind
                    con.execute("ROLLBACK")
                except duckdb.Error:
                    pass
            con.close()
            with users.cond:
                if write:
                    users.writing = False
                else:
                    users.readers -= 1
                if users.readers == 0:
                    self._detach(inst)
                users.cond.notify_all()

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
                last = _one(con, "SELECT coalesce(max(value), 0) FROM idx.state WHERE name = 'cursor'")
                with self.engine.connect() as conn:
                    rows = conn.execute(sa.select(events).where(
                        events.c.id > last, events.c.segment_id.is_not(None), events.c.kind == "message")
                        .order_by(events.c.id).limit(batch)).all()
                if not rows:
                    self.caught_up = True
                    return added
                docs = [d for d in (self._doc(r) for r in rows) if d is not None]
                con.execute("BEGIN")
                self.insert(con, docs)
                con.execute("INSERT OR REPLACE INTO idx.state VALUES ('cursor', ?)", [rows[-1].id])
                con.execute("COMMIT")
                added += len(docs)
            self.compact(con)
        return added

    @staticmethod
    def insert(con: duckdb.DuckDBPyConnection, docs: list[tuple[Any, ...]]) -> None:
        """Add documents (tuples in DOC_COLUMNS order), their words with positions and field keys."""
        if not docs:
            return
        terms = [t for d in docs for t in doc_terms(d)]
        # columnar inserts through Arrow: row-by-row executemany is far slower
        con.register("new_docs", pa.table(list(zip(*docs, strict=True)), schema=DOC_SCHEMA))
        con.execute("INSERT OR REPLACE INTO idx.docs SELECT * FROM new_docs")
        con.unregister("new_docs")
        if terms:
            con.register("new_terms", pa.table(list(zip(*terms, strict=True)), names=["doc_id", "term", "pos"]))
            con.execute("INSERT INTO idx.terms SELECT * FROM new_terms")
            con.unregister("new_terms")

    @staticmethod
    def compact(con: duckdb.DuckDBPyConnection, force: bool = False) -> bool:
        """Rewrite the words table sorted by word once its unsorted tail is large: DuckDB's per
        row-group min/max then skips all but a few row groups for a word lookup."""
        total = _one(con, "SELECT count(*) FROM idx.terms")
        row = con.execute("SELECT value FROM idx.state WHERE name = 'sorted_terms'").fetchone()
        done = row[0] if row else 0
        if not force and total - done < max(500_000, done // 4):
            return False
        con.execute("BEGIN")
        con.execute("CREATE OR REPLACE TABLE idx.terms_sorted AS SELECT * FROM idx.terms ORDER BY term, doc_id")
        con.execute("DROP TABLE idx.terms")
        con.execute("ALTER TABLE idx.terms_sorted RENAME TO terms")
        con.execute("INSERT OR REPLACE INTO idx.state VALUES ('sorted_terms', ?)", [total])
        con.execute("COMMIT")
        return True

    def _doc(self, r: Row) -> tuple[Any, ...] | None:
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
        users = _instance(self.path.parent)[1]
        with users.cond:  # nobody has it attached, and nobody attaches it while it goes
            users.cond.wait_for(lambda: not users.writing and users.readers == 0)
            for p in (self.path, self.path.with_name(self.path.name + ".wal")):
                p.unlink(missing_ok=True)
        return self.update()

    # -- searching ----------------------------------------------------------------------------

    def search(self, query: str, tenants: set[str] | None = None, limit: int = 50, cursor: str | None = None,
               filters: dict[str, Any] | None = None, start: datetime | None = None,
               end: datetime | None = None, exact_in_sql: bool = True) -> Page:
        """Exact matches of `query` (optionally within `tenants`, structured `filters` on doc
        columns and sent time in [start, end)), oldest first, `limit` per page from `cursor`.

        A query without proximity runs wholly in SQL (count and page); one with proximity is
        narrowed in SQL by its required words, then every candidate is checked word by word."""
        tree = parse(query)
        where, params = ["TRUE"], list[Any]()
        if tenants is not None:
            if not tenants:
                return Page(0, query=tree.describe())
            where.append(f"tenant IN ({', '.join('?' * len(tenants))})")
            params += sorted(tenants)
        for name, value in sorted((filters or {}).items()):
            if name not in DOC_COLUMNS or name in ("text", "subject_keys"):
                raise InvalidInput(f"unknown filter {name!r}")
            where.append(f"{name} = ?")
            params.append(value)
        for op, t in ((">=", start), ("<", end)):
            if t is not None:
                where.append(f"event_time {op} ?")
                params.append(_naive(t))
        after = _uncursor(cursor) if cursor is not None else None
        with self.connect(write=False) as con, _deadline(con, query) as check:
            exact = _to_sql(tree, lambda pattern, keys: _expand(con, pattern, keys, query)) if exact_in_sql else None
            if exact is not None:
                return self._search_sql(con, tree, where + [exact[0]], params + exact[1], limit, after)
            for term in dict.fromkeys(_required_terms(tree)):
                where.append("doc_id IN (SELECT doc_id FROM idx.terms WHERE term = ?)")
                params.append(term)
            candidates = _one(con, f"SELECT count(*) FROM idx.docs WHERE {' AND '.join(where)}", params)
            if candidates > MAX_CANDIDATES:
                raise QueryTooCostly(f"{candidates:,} messages to check word by word (at most {MAX_CANDIDATES:,}; "
                                     "a plain word that every match contains narrows it)", query)
            rows = con.execute(f"SELECT {_OUT} FROM idx.docs WHERE {' AND '.join(where)} "
                               "ORDER BY event_time NULLS FIRST, doc_id", params).fetchall()
            return self._checked(tree, rows, limit, after, check)

    def _checked(self, tree: Node, rows: list[Any], limit: int, after: tuple[str, int] | None,
                 check: Callable[[], None]) -> Page:
        """The candidates that match word by word (proximity, digit wildcards), a page of them."""
        hits = []
        for n, row in enumerate(rows):
            if n % 1000 == 0:
                check()
            d = dict(zip(OUT_COLUMNS, row, strict=True))
            for col in ("event_time", "received_at"):
                d[col] = d[col].replace(tzinfo=UTC) if isinstance(d[col], datetime) else None
            if matches(tree, d["text"] or "", query_fields(d)):
                hits.append(_out(d))
        first = 0
        if after is not None:
            first = next((i for i, h in enumerate(hits) if (h["event_time"] or "", h["doc_id"]) > after), len(hits))
        page = hits[first:first + limit]
        more = first + limit < len(hits)
        return Page(len(hits), page, _cursor(page[-1]) if more and page else None, tree.describe())

    def _search_sql(self, con: duckdb.DuckDBPyConnection, tree: Node, where: list[str], params: list[Any],
                    limit: int, after: tuple[str, int] | None) -> Page:
        """Count and page in one pass over (doc_id, event_time) of the matches, then read the
        page's rows only (reading every column of every match to sort them costs far more)."""
        cond = " AND ".join(where)
        page_cond, page_params = "TRUE", []
        if after is not None:
            t = datetime.fromisoformat(after[0]).astimezone(UTC).replace(tzinfo=None) if after[0] else _EPOCH
            page_cond = "(coalesce(event_time, ?), doc_id) > (?, ?)"
            page_params = [_EPOCH, t, after[1]]
        found = con.execute(
            f"WITH m AS MATERIALIZED (SELECT doc_id, event_time FROM idx.docs WHERE {cond}) "
            f"SELECT (SELECT count(*) FROM m), doc_id FROM (SELECT doc_id, event_time FROM m WHERE {page_cond} "
            "ORDER BY event_time NULLS FIRST, doc_id LIMIT ?) ORDER BY event_time NULLS FIRST, doc_id",
            params + page_params + [limit + 1]).fetchall()
        total = found[0][0] if found else _one(con, f"SELECT count(*) FROM idx.docs WHERE {cond}", params)
        ids = [int(r[1]) for r in found[:limit]]
        rows = con.execute(f"SELECT {_OUT} FROM idx.docs WHERE doc_id BETWEEN ? AND ? AND doc_id IN "
                           f"({', '.join(map(str, ids))})", [min(ids), max(ids)]).fetchall() if ids else []
        order = {doc_id: i for i, doc_id in enumerate(ids)}
        hits = sorted((_out(dict(zip(OUT_COLUMNS, r, strict=True))) for r in rows), key=lambda h: order[h["doc_id"]])
        more = len(found) > limit
        return Page(total, hits, _cursor(hits[-1]) if more and hits else None, tree.describe())


def query_fields(d: Mapping[str, Any]) -> dict[str, Any]:
    """A message's values for the query language's fields (what `searchlang.matches` evaluates): an
    index document, or a record view with `has_attachment` beside it."""
    return {"participant": [d["sender"], d["recipient"], d["conversation"]], "number": d["stream"],
            "conversation": d["conversation"], "direction": d["direction"], "origin": d["origin"],
            "type": d["type"], "template": d["template_name"], "status": d["status"],
            "has": ["attachment"] if d["has_attachment"] else [], "sent": d["event_time"],
            "archived": d["received_at"]}


OUT_COLUMNS = tuple(c for c in DOC_COLUMNS if c != "subject_keys")
_OUT = ", ".join(OUT_COLUMNS)
_EPOCH = datetime(1, 1, 1)
_FIELD_COLUMNS = {"direction": "direction", "origin": "origin", "type": "type", "template": "template_name",
                  "status": "status"}
_FIELD_KEYS = {"participant": "p:", "conversation": "c:", "number": "n:"}
_WORD_SQL = "doc_id IN (SELECT doc_id FROM idx.terms WHERE term = ?)"


def _out(d: dict[str, Any]) -> dict[str, Any]:
    for col in ("event_time", "received_at"):
        v = d[col]
        d[col] = (v.replace(tzinfo=UTC) if v.tzinfo is None else v).astimezone(UTC).isoformat() \
            if isinstance(v, datetime) else None
    return d


def _expand(con: duckdb.DuckDBPyConnection, pattern: str, keys: bool, query: str) -> list[str]:
    """The indexed words a wildcard stands for; QueryTooCostly past MAX_EXPANSION of them."""
    found = [r[0] for r in con.execute(
        f"SELECT DISTINCT term FROM idx.terms WHERE term LIKE ? ESCAPE '\\' AND pos {'= -1' if keys else '>= 0'} "
        "LIMIT ?", [pattern, MAX_EXPANSION + 1]).fetchall()]
    if len(found) > MAX_EXPANSION:
        raise QueryTooCostly(f"a wildcard matches more than {MAX_EXPANSION:,} different words", query)
    return found


@contextmanager
def _deadline(con: duckdb.DuckDBPyConnection, query: str) -> Iterator[Callable[[], None]]:
    """Interrupt `con`'s statement once SEARCH_SECONDS have passed; yields a check for Python loops."""
    ends = time.monotonic() + SEARCH_SECONDS
    timer = threading.Timer(SEARCH_SECONDS, con.interrupt)
    timer.daemon = True
    timer.start()

    def check() -> None:
        if time.monotonic() > ends:
            raise QueryTooCostly(f"it ran longer than {SEARCH_SECONDS:g} s", query)

    try:
        yield check
    except duckdb.InterruptException as e:
        raise QueryTooCostly(f"it ran longer than {SEARCH_SECONDS:g} s", query) from e
    finally:
        timer.cancel()


def _like(word: str) -> str:
    """A `*`/`?` wildcard as a LIKE pattern (escape `\\`)."""
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


Expand = Callable[[str, bool], list[str]]  # (LIKE pattern, field keys?) -> the indexed words it matches


def _to_sql(node: Node, expand: Expand) -> tuple[str, list[Any]] | None:
    """The query tree as one SQL condition over idx.docs that selects exactly what `matches`
    accepts, or None when it has proximity (or a digit wildcard) and needs the word-level check.
    A wildcard becomes the list of indexed words it matches (`expand`, capped), looked up exactly."""
    if isinstance(node, Term):
        if any("=" in w for w in node.words):
            return None
        if len(node.words) == 1:
            word = node.words[0]
            if not node.wildcard:
                return _WORD_SQL, [word]
            return ("doc_id IN (SELECT doc_id FROM idx.terms WHERE term IN (SELECT unnest(?::VARCHAR[])) "
                    "AND pos >= 0)", [expand(_like(word), False)])
        # a phrase: word k at the position of word 0 plus k
        joins, conds, params = ["idx.terms t0"], [], list[Any]()
        for k, word in enumerate(node.words):
            if k:
                joins.append(f"JOIN idx.terms t{k} ON t{k}.doc_id = t0.doc_id AND t{k}.pos = t0.pos + {k}")
            wild = any(c in word for c in "*?")
            conds.append(f"t{k}.term IN (SELECT unnest(?::VARCHAR[])) AND t{k}.pos >= 0" if wild else f"t{k}.term = ?")
            params.append(expand(_like(word), False) if wild else word)
        return f"doc_id IN (SELECT t0.doc_id FROM {' '.join(joins)} WHERE {' AND '.join(conds)})", params
    if isinstance(node, Field):
        if node.name in DATE_FIELDS:
            col = "event_time" if node.name == "sent" else "received_at"
            lo = datetime.fromisoformat(node.value)
            last = datetime.fromisoformat(node.until or node.value)
            hi = last + timedelta(days=1) if last.date() < date.max else datetime.max  # through 9999-12-31
            return f"({col} >= ? AND {col} < ?)", [lo, hi]
        if node.name == "has":
            return ("has_attachment", []) if node.value.lower() == "attachment" else ("FALSE", [])
        value = node.value.casefold()
        wild = any(c in value for c in "*?=")
        if wild and "=" in value:
            return None
        if node.name in _FIELD_KEYS:
            key = _FIELD_KEYS[node.name]
            if wild:
                return ("doc_id IN (SELECT doc_id FROM idx.terms WHERE term IN (SELECT unnest(?::VARCHAR[])) "
                        "AND pos = -1)", [expand(key + _like(value), True)])
            return _WORD_SQL, [key + value]
        col = _FIELD_COLUMNS[node.name]
        return (f"lower({col}) LIKE ? ESCAPE '\\'", [_like(value)]) if wild else (f"lower({col}) = ?", [value])
    if isinstance(node, Not):
        inner = _to_sql(node.node, expand)
        return None if inner is None else (f"NOT coalesce({inner[0]}, FALSE)", inner[1])
    if isinstance(node, Bool):
        parts = [p for p in (_to_sql(n, expand) for n in node.nodes) if p is not None]
        if len(parts) < len(node.nodes):
            return None
        return "(" + f" {node.op} ".join(p[0] for p in parts) + ")", [x for p in parts for x in p[1]]
    return None  # Near: word positions
