"""The archive's own access-audit trail: events on the sealed `audit` stream.

Each entry records who did what (action, actor, details such as the query text) and is
sealed, hash-chained and checkpointed exactly like a message. Details are encrypted under the
`system:audit` key because a query can itself name a person.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from ulid import ULID

from archiver.keys import KeyRing
from archiver.normalize import AUDIT_KEY, AUDIT_STREAM, append_events, system_builder
from archiver.records import canonical_json

__all__ = ["AUDIT_KEY", "AUDIT_STREAM", "record"]


def record(engine: sa.Engine, keyring: KeyRing, action: str, actor: str, details: dict[str, Any]) -> str:
    """Append one audit event; it is sealed with the next sealing run. Returns its natural key."""
    natural_key = f"audit:{ULID()}"
    b = system_builder(keyring)
    body = canonical_json({"action": action, "actor": actor, "at": b.received_at.isoformat(), "details": details})
    b.add(AUDIT_STREAM, natural_key, "audit", body, [AUDIT_KEY], type=action, event_time=b.received_at)
    with engine.begin() as conn:
        append_events(conn, b)
    return natural_key
