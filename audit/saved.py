"""Saved searches: a person's own queries with their filters, kept for the next morning.

A saved search is what the person typed (the query, its filters, its date range) and a name, both
encrypted (AES-GCM, a data key per principal: a query can name a client or hold a phone number),
never archived data: saving one reads nothing, and running one is a search like any other (one
access event). Only their owner lists, runs or deletes them; deleting one removes its ciphertext.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from ulid import ULID

from archiver import crypto
from archiver.db import metadata
from archiver.errors import InvalidInput, NotFound
from archiver.keys import KeyRing
from archiver.sqlutil import as_utc, utcnow

MAX_PER_PRINCIPAL = 50
FIELDS = ("q", "stream", "direction", "origin", "type", "template", "from", "to")

saved_searches = sa.Table(
    "saved_searches", metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("principal_id", sa.String(200), nullable=False),
    sa.Column("sealed", sa.Text, nullable=False),  # AES-GCM of {"name", "fields"}
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_saved_searches_principal", "principal_id", "created_at"),
)


@dataclass(frozen=True)
class SavedSearch:
    id: str
    name: str
    fields: dict[str, str]
    created_at: datetime


class SavedSearches:
    def __init__(self, engine: sa.Engine, keyring: KeyRing) -> None:
        self.engine, self.keyring = engine, keyring

    def _key(self, principal_id: str, create: bool) -> bytes:
        return self.keyring.data_key(f"saved-searches:{principal_id}", create=create)

    @staticmethod
    def _aad(principal_id: str, search_id: str) -> bytes:
        return f"saved-search|{principal_id}|{search_id}".encode()

    def save(self, principal_id: str, name: str, fields: dict[str, str]) -> SavedSearch:
        name = " ".join(name.split())[:120]
        kept = {k: str(fields[k]).strip()[:2000] for k in FIELDS if str(fields.get(k) or "").strip()}
        if not name:
            raise InvalidInput("a saved search needs a name")
        if not kept.get("q"):
            raise InvalidInput("only a search with a query can be saved")
        search_id, now = str(ULID()), utcnow()
        nonce, sealed = crypto.encrypt(self._key(principal_id, create=True),
                                       json.dumps({"name": name, "fields": kept}).encode(),
                                       self._aad(principal_id, search_id))
        with self.engine.begin() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(saved_searches).where(
                saved_searches.c.principal_id == principal_id)).scalar_one()
            if count >= MAX_PER_PRINCIPAL:
                raise InvalidInput(f"at most {MAX_PER_PRINCIPAL} saved searches: delete one first")
            conn.execute(saved_searches.insert().values(
                id=search_id, principal_id=principal_id, created_at=now,
                sealed=f"{base64.b64encode(nonce).decode()}:{base64.b64encode(sealed).decode()}"))
        return SavedSearch(search_id, name, kept, now)

    def _open(self, row: Any) -> SavedSearch:
        nonce, sealed = row.sealed.split(":")
        value = json.loads(crypto.decrypt(self._key(row.principal_id, create=False), base64.b64decode(nonce),
                                          base64.b64decode(sealed), self._aad(row.principal_id, row.id)))
        return SavedSearch(row.id, value["name"], value["fields"], as_utc(row.created_at) or utcnow())

    def list(self, principal_id: str) -> list[SavedSearch]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(saved_searches).where(saved_searches.c.principal_id == principal_id)
                                .order_by(saved_searches.c.created_at, saved_searches.c.id)).all()
        return [self._open(r) for r in rows]

    def get(self, principal_id: str, search_id: str) -> SavedSearch:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(saved_searches).where(saved_searches.c.id == search_id[:26],
                                                               saved_searches.c.principal_id == principal_id)).first()
        if row is None:  # (another person's saved search is as missing as one that never was)
            raise NotFound("no such saved search")
        return self._open(row)

    def delete(self, principal_id: str, search_id: str) -> None:
        with self.engine.begin() as conn:
            gone = conn.execute(saved_searches.delete().where(saved_searches.c.id == search_id[:26],
                                                              saved_searches.c.principal_id == principal_id)).rowcount
        if not gone:
            raise NotFound("no such saved search")
