"""One writer per stream, released automatically when the writer dies.

- PostgreSQL: a session-level advisory lock on a dedicated connection (the server drops it
  when the connection dies, whichever machine the sealer ran on).
- SQLite (embedded, one machine): an exclusive `flock` on a per-stream file beside the
  database (the kernel drops it when the process dies).

A time-based lease would keep a crashed sealer's streams blocked until it expired.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa


def _lock_id(stream: str) -> int:
    return int.from_bytes(hashlib.sha256(b"strongroom.stream|" + stream.encode()).digest()[:8], "big", signed=True)


class StreamLocks:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.dir: Path | None = None
        if engine.dialect.name == "sqlite":
            database = engine.url.database
            if not database or database == ":memory:":
                raise ValueError("stream locks need a file-backed SQLite database")
            self.dir = Path(database).resolve().parent / "locks"
            self.dir.mkdir(mode=0o700, exist_ok=True)

    @contextmanager
    def hold(self, stream: str) -> Iterator[bool]:
        """Yield True while this process is the stream's only writer, False if another is."""
        if self.dir is not None:
            fd = os.open(self.dir / f"{hashlib.sha256(stream.encode()).hexdigest()[:32]}.lock",
                         os.O_RDWR | os.O_CREAT, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    yield False
                    return
                yield True
            finally:
                os.close(fd)
            return
        with self.engine.connect() as conn:
            key = _lock_id(stream)
            got = bool(conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
            try:
                yield got
            finally:
                if got:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.rollback()
