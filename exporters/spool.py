"""What a run must remember about everything it exported, on disk rather than in memory.

A production of millions of records cannot keep a Python set of their ids (about 150 bytes per
record), nor a dict per file written. The exporter keeps them in a throw-away SQLite file in a
private temporary directory, deleted when the run ends: which records were exported (to write
each once, and to prove them in sequence order at the end), which the query matched, which were
withheld, and every file written (path, size, SHA-256, record count) for the manifest.

It holds identifiers only — numbers, sequence numbers, subject ids, bundle paths and hashes — never
content, so nothing personal touches the disk in clear.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from exporters.sinks import Entry

_SCHEMA = """
CREATE TABLE records (stream TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (stream, seq)) WITHOUT ROWID;
CREATE TABLE matched (stream TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (stream, seq)) WITHOUT ROWID;
CREATE TABLE withheld (id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, sha256 TEXT NOT NULL) WITHOUT ROWID;
"""


class Spool:
    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="strongroom-export-")
        self.db = sqlite3.connect(Path(self._dir.name) / "spool.sqlite", isolation_level=None)
        # a crash loses the run anyway: no journal, no fsync; a bounded page cache keeps memory flat
        self.db.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -8192;"
                              "BEGIN;" + _SCHEMA)
        self.n_records = 0
        # rows are written in batches: a statement per row cost tens of microseconds each (GIL handoffs)
        self._records: list[tuple[str, int]] = []
        self._files: list[tuple[str, int, str]] = []

    def close(self) -> None:
        self.db.close()
        self._dir.cleanup()

    def flush(self) -> None:
        if self._records:
            self.db.executemany("INSERT INTO records VALUES (?, ?)", self._records)
            self._records.clear()
        if self._files:
            try:
                self.db.executemany("INSERT INTO files VALUES (?, ?, ?)", self._files)
            except sqlite3.IntegrityError:
                raise ValueError("a bundle file was written twice") from None
            self._files.clear()

    # records

    def add_record(self, stream: str, seq: int) -> bool:
        """Remember an exported record; False if it already was (a gap shown in two threads)."""
        self.flush()
        new = self.db.execute("INSERT OR IGNORE INTO records VALUES (?, ?)", (stream, seq)).rowcount == 1
        self.n_records += new
        return new

    def add_new_record(self, stream: str, seq: int) -> None:
        """Remember a record that cannot have been exported before (it belongs to the conversation
        being written, and each conversation is written once)."""
        self._records.append((stream, seq))
        self.n_records += 1
        if len(self._records) >= 5000:
            self.flush()

    def has_record(self, record_id: str) -> bool:
        self.flush()
        stream, _, seq = record_id.rpartition("/")
        if not stream or not seq.isdigit():
            return False
        return self.db.execute("SELECT 1 FROM records WHERE stream = ? AND seq = ?", (stream, int(seq))).fetchone() \
            is not None

    def streams(self) -> list[str]:
        self.flush()
        return [s for (s,) in self.db.execute("SELECT DISTINCT stream FROM records ORDER BY stream")]

    def seqs(self, stream: str) -> Iterator[int]:
        """The stream's exported sequence numbers, ascending, streamed from disk."""
        cur = self.db.execute("SELECT seq FROM records WHERE stream = ? ORDER BY seq", (stream,))
        while rows := cur.fetchmany(10_000):
            yield from (s for (s,) in rows)

    def record_ids(self, limit: int) -> list[str]:
        self.flush()
        return [f"{s}/{q}" for s, q in self.db.execute(
            "SELECT stream, seq FROM records ORDER BY stream, seq LIMIT ?", (limit,))]

    # the query's hits

    def add_matched(self, hits: Iterable[tuple[str, int]]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO matched VALUES (?, ?)", hits)

    def matched_streams(self) -> list[str]:
        return [s for (s,) in self.db.execute("SELECT DISTINCT stream FROM matched ORDER BY stream")]

    def matched_seqs(self, stream: str) -> Iterator[list[int]]:
        cur = self.db.execute("SELECT seq FROM matched WHERE stream = ? ORDER BY seq", (stream,))
        while rows := cur.fetchmany(1000):
            yield [s for (s,) in rows]

    def matched_among(self, pairs: Iterable[tuple[str, int]]) -> set[tuple[str, int]]:
        """Which of `pairs` the query matched."""
        pairs = list(pairs)
        found: set[tuple[str, int]] = set()
        for i in range(0, len(pairs), 400):  # two parameters each, under SQLite's bound-parameter limit
            chunk = pairs[i:i + 400]
            values = ",".join(["(?, ?)"] * len(chunk))
            found.update(self.db.execute(f"SELECT stream, seq FROM matched WHERE (stream, seq) IN (VALUES {values})",
                                         [v for p in chunk for v in p]).fetchall())
        return found

    # withheld records (erased or disposed: listed in the chain of custody)

    def withhold(self, record_id: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO withheld VALUES (?)", (record_id,))

    def withheld(self) -> list[str]:
        return [i for (i,) in self.db.execute("SELECT id FROM withheld ORDER BY id")]

    def n_withheld(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM withheld").fetchone()[0])

    # files of the bundle

    def add_file(self, entry: Entry) -> None:
        self._files.append((entry.path, entry.size, entry.sha256))
        if len(self._files) >= 5000:
            self.flush()

    def has_file(self, path: str) -> bool:
        self.flush()
        return self.db.execute("SELECT 1 FROM files WHERE path = ?", (path,)).fetchone() is not None

    def files(self) -> Iterator[Entry]:
        """Every file written, by path."""
        self.flush()
        cur = self.db.execute("SELECT path, size, sha256 FROM files ORDER BY path")
        while rows := cur.fetchmany(10_000):
            yield from (Entry(*r) for r in rows)
