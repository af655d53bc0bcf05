"""Ledger cursors: derived ledgers follow the events table by id, each from where it stopped."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from archiver.db import events, metadata
from archiver.sqlutil import Row

ledger_cursors = sa.Table(
    "ledger_cursors",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("last_id", sa.BigInteger, nullable=False),
)


def read_cursor(conn: sa.Connection, name: str) -> int:
    return int(conn.execute(sa.select(ledger_cursors.c.last_id).where(ledger_cursors.c.name == name)).scalar() or 0)


def write_cursor(conn: sa.Connection, name: str, last_id: int) -> None:
    if conn.execute(sa.update(ledger_cursors).where(ledger_cursors.c.name == name).values(last_id=last_id)).rowcount == 0:
        conn.execute(sa.insert(ledger_cursors).values(name=name, last_id=last_id))


def follow(engine: sa.Engine, name: str, where: Any, handle: Callable[[Row], int],
           batch: int = 2000, max_batches: int | None = None, flush: Callable[[], int] | None = None) -> int:
    """Feed every event matching `where` past cursor `name` to `handle`, in id order, moving the
    cursor after each batch (at most `max_batches`, so a caller's round stays short); `flush`, if
    given, runs before the cursor moves (what `handle` gathered, written once per batch: a crash
    before the cursor moves replays the batch, so what `flush` writes must be idempotent).
    Returns the sum of what `handle` and `flush` returned."""
    total = 0
    for _ in itertools.count() if max_batches is None else range(max_batches):
        with engine.connect() as conn:
            last = read_cursor(conn, name)
            rows = conn.execute(sa.select(events).where(events.c.id > last, where).order_by(events.c.id)
                                .limit(batch)).all()
        if not rows:
            return total
        for r in rows:
            total += handle(r)
        if flush is not None:
            total += flush()
        with engine.begin() as conn:
            write_cursor(conn, name, rows[-1].id)
    return total
