"""Consent ledger: append-only opt-in / opt-out events per contact and category (R-38, R-40).

Entries come from two places:

- recorded by the business (`record`): an opt-in or opt-out with its method (web form, checkbox,
  paper, call…), an evidence hash (the form text version, a screenshot, the checkbox state), the
  actor and the UTC time it happened;
- derived from what the archive captured (`sync`): an inbound text that is an opt-out keyword
  (STOP and equivalents in several languages, configurable), a template "Stop promotions"
  button reply, and `user_preferences` webhooks (stop / resume marketing).

Each entry is a row in SQL (for queries) and a sealed `consent` record on the number's stream,
encrypted under the contact's key. State as of any instant T is the newest entry at or before T
by *when it happened* (not when it reached us: webhooks arrive out of order); at the same
instant an opt-out wins. The state comes with the entry that decided it — its evidence.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from ulid import ULID

from archiver.db import BigId, events, metadata
from archiver.errors import InvalidInput, KeyDestroyedError
from archiver.identity import subject_key_id
from archiver.keys import KeyRing
from archiver.kinds import key_part, obj
from archiver.normalize import append_events, system_builder
from archiver.records import canonical_json
from archiver.sqlutil import Row, as_utc, insert_ignore, utcnow
from policies.cursors import follow

Ts = sa.DateTime(timezone=True)
CATEGORIES = ("marketing", "utility", "authentication", "service")
# Exact-match keywords (case- and punctuation-insensitive): EN, FR, DE, ES, PT, IT, NL.
DEFAULT_OPT_OUT_KEYWORDS = ("stop", "stop all", "unsubscribe", "stop promotions", "arret", "arrêt", "stopp",
                            "abmelden", "baja", "parar", "cancelar", "alto", "sair", "cancella", "afmelden")
KEYWORD_CATEGORIES = ("marketing", "utility")  # a STOP ends business-initiated messages
BUTTON_OPT_OUT = ("stop promotions", "stop promotion", "unsubscribe")

consent_events = sa.Table(
    "consent_events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("stream", sa.String(128), nullable=False),
    sa.Column("subject", sa.String(40), nullable=False),
    sa.Column("category", sa.String(32), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),  # opt_in | opt_out
    sa.Column("method", sa.String(64), nullable=False),
    sa.Column("evidence_sha256", sa.String(64)),
    sa.Column("evidence_ref", sa.String(200)),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("at", Ts, nullable=False),
    sa.Column("recorded_at", Ts, nullable=False),
    sa.Column("source", sa.String(400), nullable=False),
    sa.UniqueConstraint("stream", "source", "category", "action", name="uq_consent_source"),
    sa.Index("ix_consent_lookup", "stream", "subject", "category", "at"),
)

def normalize_keyword(text: str) -> str:
    return " ".join(text.casefold().strip().strip(string.punctuation + "¡¿!. ").split())


@dataclass(frozen=True)
class ConsentState:
    status: str  # opted_in | opted_out | unknown
    entry: dict[str, Any] | None  # the ledger entry that decided it (its evidence)


class ConsentLedger:
    def __init__(self, engine: sa.Engine, keyring: KeyRing, opt_out_keywords: tuple[str, ...] = DEFAULT_OPT_OUT_KEYWORDS
                 ) -> None:
        self.engine = engine
        self.keyring = keyring
        self.keywords = {normalize_keyword(k) for k in opt_out_keywords}

    # -- writing ------------------------------------------------------------------------------

    def record(self, stream: str, subject: str, category: str, action: str, method: str, actor: str, at: datetime,
               evidence_sha256: str | None = None, evidence_ref: str | None = None,
               source: str | None = None) -> bool:
        """Append one entry (idempotent per source). Returns whether it was new."""
        if category not in CATEGORIES:
            raise InvalidInput(f"category must be one of {CATEGORIES}")
        if action not in ("opt_in", "opt_out"):
            raise InvalidInput("action must be opt_in or opt_out")
        if at.tzinfo is None:
            raise InvalidInput("consent times are UTC-aware")
        now = utcnow()
        source = source or f"manual:{ULID()}"
        row = {"stream": stream, "subject": subject, "category": category, "action": action, "method": method,
               "evidence_sha256": evidence_sha256, "evidence_ref": evidence_ref, "actor": actor, "at": at,
               "recorded_at": now, "source": source}
        b = system_builder(self.keyring, now)
        entry = {**row, "at": at.isoformat(), "recorded_at": now.isoformat()}
        b.add(stream, f"consent:{key_part(source)}:{category}:{action}", "consent", canonical_json(entry),
              [subject_key_id(subject)], conversation=subject, type=category, status=action, event_time=at)
        with self.engine.begin() as conn:
            exists = conn.execute(sa.select(consent_events.c.id).where(
                consent_events.c.stream == stream, consent_events.c.source == source,
                consent_events.c.category == category, consent_events.c.action == action)).first()
            if exists:
                return False
            insert_ignore(conn, consent_events, [row])
            append_events(conn, b)
        return True

    def sync(self, batch: int = 2000, max_batches: int | None = None) -> int:
        """Derive entries from captured keywords, opt-out buttons and user_preferences. Returns entries added."""
        inbound = sa.and_(events.c.kind == "message", events.c.direction == "inbound",
                          events.c.type.in_(["text", "button", "interactive"]))
        return follow(self.engine, "consent", sa.or_(inbound, events.c.kind == "preference"), self._derive, batch,
                      max_batches)

    def _derive(self, r: Row) -> int:
        if r.conversation is None or r.content is None:
            return 0
        try:
            doc = json.loads(self.keyring.open_record(r))
        except KeyDestroyedError:
            return 0
        at = as_utc(r.event_time) or as_utc(r.received_at)
        assert at is not None
        found: list[tuple[str, str, str, str]] = []  # (category, action, method, evidence ref)
        if r.kind == "preference":
            pref = doc.get("preference") or {}
            action = {"stop": "opt_out", "resume": "opt_in"}.get(str(pref.get("value")))
            if action and str(pref.get("category", "")).startswith("marketing"):
                found.append(("marketing", action, "user_preferences", str(pref.get("detail") or "")[:200]))
        else:
            msg = doc.get("message") or {}
            if r.type == "text":
                text = (msg.get("text") or {}).get("body") if isinstance(msg.get("text"), dict) else None
                if isinstance(text, str) and normalize_keyword(text) in self.keywords:
                    found += [(c, "opt_out", "keyword", f"keyword:{normalize_keyword(text)}") for c in KEYWORD_CATEGORIES]
            elif r.type == "button":
                button = obj(msg.get("button"))
                label = normalize_keyword(str(button.get("text") or button.get("payload") or ""))
                if label in BUTTON_OPT_OUT:
                    found.append(("marketing", "opt_out", "template_button", f"button:{label}"))
        return sum(self.record(r.stream, r.conversation, category, action, method, "contact", at,
                               evidence_ref=ref, source=r.natural_key) for category, action, method, ref in found)

    # -- reading ------------------------------------------------------------------------------

    def state(self, stream: str, subject: str, category: str, at: datetime) -> ConsentState:
        """Consent of `subject` for `category` on `stream` as of `at`, with the deciding entry."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(consent_events).where(
                consent_events.c.stream == stream, consent_events.c.subject == subject,
                consent_events.c.category == category, consent_events.c.at <= at)).all()
        if not rows:
            return ConsentState("unknown", None)
        newest = max(rows, key=lambda r: (as_utc(r.at), r.action == "opt_out", r.id))
        entry = {k: (as_utc(v).isoformat() if isinstance(v, datetime) else v) for k, v in newest._mapping.items()}
        return ConsentState("opted_in" if newest.action == "opt_in" else "opted_out", entry)

    def history(self, stream: str, subject: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(consent_events).where(
                consent_events.c.stream == stream, consent_events.c.subject == subject)
                .order_by(consent_events.c.at, consent_events.c.id)).all()
        return [{k: (as_utc(v).isoformat() if isinstance(v, datetime) else v) for k, v in r._mapping.items()}
                for r in rows]
