"""The archive's own access-audit trail: events on the sealed `audit` stream.

Each entry records who did what (action, actor, details such as the query text) and is
sealed, hash-chained and checkpointed exactly like a message. Details are encrypted under the
`system:audit` key because a query can itself name a person.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from archiver.keys import KeyRing
from archiver.normalize import AUDIT_KEY, AUDIT_STREAM, append_audit

__all__ = ["AUDIT_KEY", "AUDIT_STREAM", "record"]


def record(engine: sa.Engine, keyring: KeyRing, action: str, actor: str, details: dict[str, Any]) -> str:
    """Append one access-audit event. Returns its natural key."""
    return append_audit(engine, keyring, "audit", action, actor, details)
