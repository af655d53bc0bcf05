"""The archive's own access-audit trail: events on the sealed `audit` stream.

Each entry records who did what (action, actor, details such as the query text) and is
sealed, hash-chained and checkpointed exactly like a message. Details are encrypted under the
`system:audit` key because a query can itself name a person.
"""

from __future__ import annotations

from typing import Any

import rfc8785
import sqlalchemy as sa
from ulid import ULID

from archiver.crypto import encrypt
from archiver.db import events
from archiver.keys import KeyRing
from archiver.records import content_aad
from archiver.sqlutil import utcnow

AUDIT_STREAM = "audit"
AUDIT_KEY = "system:audit"


def record(engine: sa.Engine, keyring: KeyRing, action: str, actor: str, details: dict[str, Any]) -> str:
    """Append one audit event; it is sealed with the next sealing run. Returns its natural key."""
    natural_key = f"audit:{ULID()}"
    now = utcnow()
    body = rfc8785.dumps({"action": action, "actor": actor, "at": now.isoformat(), "details": details})
    nonce, ciphertext = encrypt(keyring.data_key(AUDIT_KEY), body, content_aad(AUDIT_STREAM, natural_key))
    with engine.begin() as conn:
        conn.execute(sa.insert(events).values(
            stream=AUDIT_STREAM, natural_key=natural_key, kind="audit", type=action, received_at=now,
            event_time=now, modelled=True, subject_key_id=AUDIT_KEY, nonce=nonce, content=ciphertext,
        ))
    return natural_key
