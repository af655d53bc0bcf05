"""Template ledger: every template version and every status event; state as of any instant (R-41).

Entries come from the template webhooks the archive captured (`sync`: status updates with their
reason, category changes, component/body updates) and from registrations by the business
(`register`: a template as submitted — name, language, category, body text, whose SHA-256 is
kept). A body change makes a new version. State as of T folds every entry that happened at or
before T (Meta's event time, so out-of-order delivery does not matter): status, category,
version and body hash, with the entry that set the status.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from archiver.db import BigId, events, metadata
from archiver.keys import KeyRing
from archiver.normalize import AUDIT_KEY, append_events, system_builder
from archiver.records import canonical_json
from archiver.sqlutil import Row, as_utc, insert_ignore, utcnow
from policies.cursors import follow

Ts = sa.DateTime(timezone=True)

template_events = sa.Table(
    "template_events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("name", sa.String(512), nullable=False),
    sa.Column("language", sa.String(32), nullable=False),
    sa.Column("status", sa.String(32)),  # APPROVED, REJECTED, PAUSED, … (None: not a status event)
    sa.Column("category", sa.String(32)),
    sa.Column("body_sha256", sa.String(64)),
    sa.Column("reason", sa.String(200)),
    sa.Column("at", Ts, nullable=False),
    sa.Column("recorded_at", Ts, nullable=False),
    sa.Column("source", sa.String(400), nullable=False, unique=True),
    sa.Index("ix_template_lookup", "tenant", "name", "language", "at"),
)


@dataclass(frozen=True)
class TemplateState:
    status: str | None
    category: str | None
    version: int  # number of distinct bodies seen so far (0: never registered or updated)
    body_sha256: str | None
    entry: dict[str, Any] | None  # the entry that set the status


def _plain(row: Row) -> dict[str, Any]:
    return {k: (as_utc(v).isoformat() if isinstance(v, datetime) else v) for k, v in row._mapping.items()}


class TemplateLedger:
    def __init__(self, engine: sa.Engine, keyring: KeyRing) -> None:
        self.engine = engine
        self.keyring = keyring

    def _append(self, row: dict[str, Any]) -> bool:
        b = system_builder(self.keyring, row["recorded_at"])  # built (keys ready) before the write transaction
        doc = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
        b.add(f"waba-{row['tenant']}", f"template_ledger:{row['source']}"[:400], "template_ledger",
              canonical_json(doc), [AUDIT_KEY], tenant=row["tenant"], type="template",
              status=row["status"], template_name=row["name"][:512], template_language=row["language"][:32],
              event_time=row["at"])
        with self.engine.begin() as conn:
            if conn.execute(sa.select(template_events.c.id).where(template_events.c.source == row["source"])).first():
                return False
            insert_ignore(conn, template_events, [row])
            append_events(conn, b)
        return True

    def register(self, tenant: str, name: str, language: str, category: str, body: str, actor: str, at: datetime,
                 status: str | None = None) -> bool:
        """A template version as the business submitted it (the body itself is kept only as a hash)."""
        sha = hashlib.sha256(body.encode()).hexdigest()
        return self._append({"tenant": tenant, "name": name, "language": language, "status": status,
                             "category": category.upper(), "body_sha256": sha, "reason": f"registered by {actor}"[:200],
                             "at": at, "recorded_at": utcnow(), "source": f"register:{tenant}:{name}:{language}:{sha}"})

    def sync(self, batch: int = 2000, max_batches: int | None = None) -> int:
        """Fold captured template webhooks into the ledger. Returns entries added."""
        return follow(self.engine, "templates", events.c.kind == "template_event", self._derive, batch, max_batches)

    def _derive(self, r: Row) -> int:
        v = json.loads(self.keyring.open_record(r)).get("value", {})
        name, lang, tenant = v.get("message_template_name"), v.get("message_template_language"), r.tenant
        if not (isinstance(name, str) and isinstance(lang, str) and tenant):
            return 0
        row: dict[str, Any] = {"tenant": tenant, "name": name, "language": lang, "status": None, "category": None,
                               "body_sha256": None, "reason": None, "at": as_utc(r.event_time) or as_utc(r.received_at),
                               "recorded_at": utcnow(), "source": r.natural_key}
        if r.field == "message_template_status_update" and isinstance(v.get("event"), str):
            row.update(status=v["event"], category=v.get("message_template_category"),
                       reason=str(v.get("reason"))[:200] if v.get("reason") is not None else None)
        elif r.field == "template_category_update" and isinstance(v.get("new_category"), str):
            if "previous_category" not in v and "correct_category" in v:
                return 0  # an announcement of an impending change, not the change itself
            row.update(category=v["new_category"], reason=f"recategorised from {v.get('previous_category')}")
        elif r.field == "message_template_components_update" and isinstance(v.get("message_template_element"), str):
            row.update(body_sha256=hashlib.sha256(v["message_template_element"].encode()).hexdigest())
        else:
            return 0
        return int(self._append(row))

    def state(self, tenant: str, name: str, language: str, at: datetime) -> TemplateState:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(template_events).where(
                template_events.c.tenant == tenant, template_events.c.name == name,
                template_events.c.language == language, template_events.c.at <= at)).all()
        rows = sorted(rows, key=lambda r: (as_utc(r.at), r.id))
        status = category = body = None
        entry = None
        bodies: list[str] = []
        for r in rows:
            if r.status is not None:
                status, entry = r.status, _plain(r)
            if r.category is not None:
                category = r.category.upper()
            if r.body_sha256 is not None and r.body_sha256 not in bodies:
                bodies.append(r.body_sha256)
                body = r.body_sha256
        return TemplateState(status, category, len(bodies), body, entry)
