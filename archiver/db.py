"""SQL schema of the write path and engine helpers (SQLite embedded, PostgreSQL production).

Tables:
- `inbox`            raw webhook bodies, AES-GCM encrypted, one row per distinct body
- `inbox_deliveries` every delivery attempt (Meta redelivers; each attempt is evidence)
- `data_keys`        per-subject data keys wrapped by the KEK (NULL once shredded)
- `events`           normalised events with encrypted content, awaiting or carrying a seq
- `streams`          per-stream chain head, tree size and in-flight segment key
- `segments`         sealed Parquet objects (key, version id, checksum, retain-until)
- `merkle_tiles`     interior Merkle hashes, 256 per row per level, kept for the life of a stream
- `identities`       time-bounded bindings of a blind-indexed phone number or BSUID to a data subject
- `media`            attachment fetch jobs and, once stored, where the encrypted WORM copy lives
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from archiver.sqlutil import insert_ignore, utcnow

metadata = sa.MetaData()

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Ts = sa.DateTime(timezone=True)

inbox = sa.Table(
    "inbox",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("body_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("received_at", Ts, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("signature", sa.String(80), nullable=False),
    sa.Column("key_id", sa.String(80), nullable=False),
    sa.Column("nonce", sa.LargeBinary, nullable=False),
    sa.Column("ciphertext", sa.LargeBinary, nullable=True),
    sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("deliveries", sa.Integer, nullable=False, server_default="1"),
    sa.Column("normalized_at", Ts, nullable=True),
    sa.Column("purged_at", Ts, nullable=True),
    sa.Index("ix_inbox_state", "state", "id"),
)

inbox_deliveries = sa.Table(
    "inbox_deliveries",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("inbox_id", BigId, sa.ForeignKey("inbox.id"), nullable=False),
    sa.Column("received_at", Ts, nullable=False),
)

data_keys = sa.Table(
    "data_keys",
    metadata,
    sa.Column("key_id", sa.String(80), primary_key=True),
    sa.Column("purpose", sa.String(16), nullable=False),
    sa.Column("wrapped", sa.LargeBinary, nullable=True),
    sa.Column("kek_id", sa.String(80), nullable=False),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("destroyed_at", Ts, nullable=True),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("stream", sa.String(128), nullable=False),
    sa.Column("natural_key", sa.String(400), nullable=False),
    sa.Column("inbox_id", BigId, sa.ForeignKey("inbox.id"), nullable=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("tenant", sa.String(64)),
    sa.Column("field", sa.String(64)),
    sa.Column("wamid", sa.String(256)),
    sa.Column("ref_wamid", sa.String(256)),  # the message this event refers to (reply, reaction, edit, …)
    sa.Column("conversation", sa.String(64)),
    sa.Column("direction", sa.String(16)),
    sa.Column("origin", sa.String(16)),
    sa.Column("sender", sa.String(64)),
    sa.Column("recipient", sa.String(64)),
    sa.Column("type", sa.String(64)),
    sa.Column("status", sa.String(32)),
    sa.Column("template_name", sa.String(512)),
    sa.Column("template_language", sa.String(32)),
    sa.Column("event_time", Ts),
    sa.Column("received_at", Ts, nullable=False),
    sa.Column("modelled", sa.Boolean, nullable=False),
    sa.Column("envelope_sha256", sa.String(64)),
    sa.Column("subject_key_id", sa.Text),  # a history chunk is about hundreds of people
    sa.Column("nonce", sa.LargeBinary),
    sa.Column("content", sa.LargeBinary),
    sa.Column("seq", sa.BigInteger, nullable=True),
    sa.Column("segment_id", BigId, nullable=True),
    sa.UniqueConstraint("stream", "natural_key", name="uq_events_stream_key"),
    sa.Index("ix_events_pending", "stream", "seq", "id"),
    sa.Index("ix_events_inbox", "inbox_id"),
    sa.Index("ix_events_wamid", "stream", "wamid"),
    sa.Index("ix_events_kind_time", "stream", "kind", "event_time"),
    sa.Index("ix_events_conversation", "conversation", "event_time"),
    sa.Index("ix_events_ref_wamid", "stream", "ref_wamid"),
)

streams = sa.Table(
    "streams",
    metadata,
    sa.Column("stream", sa.String(128), primary_key=True),
    sa.Column("tree_size", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("head_hash", sa.String(64), nullable=False),
    sa.Column("root_hash", sa.String(64), nullable=False),
    sa.Column("pending_key", sa.String(512), nullable=True),  # segment PUT in flight
    sa.Column("updated_at", Ts, nullable=False),
)

# Which tenant (WABA) a business number belongs to: bound once, by evidence — the first signed
# webhook that names the number under its WABA (`entry[].id`), or an administrator's registration —
# never by whoever writes first through the send log. Every write path checks its writer against it.
stream_tenants = sa.Table(
    "stream_tenants",
    metadata,
    sa.Column("stream", sa.String(128), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("bound_at", Ts, nullable=False),
    sa.Column("evidence", sa.String(200), nullable=False),  # webhook:<inbox id> | admin:<actor>
)

segments = sa.Table(
    "segments",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("stream", sa.String(128), nullable=False),
    sa.Column("first_seq", sa.BigInteger, nullable=False),
    sa.Column("last_seq", sa.BigInteger, nullable=False),
    sa.Column("object_key", sa.String(512), nullable=False, unique=True),
    sa.Column("version_id", sa.String(128), nullable=True),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("retain_until", Ts, nullable=False),
    sa.Column("head_hash", sa.String(64), nullable=False),
    sa.Column("root_hash", sa.String(64), nullable=False),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("checkpoint_key", sa.String(512), nullable=True),
    sa.Column("retention_rule", sa.String(64), nullable=True),  # schedule version and governing regime
    sa.Column("disposed_at", Ts, nullable=True),  # deleted after retention, under a certificate
    sa.Column("disposition_id", sa.String(26), nullable=True),
    sa.UniqueConstraint("stream", "first_seq", name="uq_segments_stream_first"),
)

merkle_tiles = sa.Table(
    "merkle_tiles",
    metadata,
    sa.Column("stream", sa.String(128), primary_key=True),
    sa.Column("level", sa.Integer, primary_key=True),
    sa.Column("chunk", sa.BigInteger, primary_key=True),
    sa.Column("hashes", sa.LargeBinary, nullable=False),
)

# Bounds of an open-ended identity binding (unix microseconds).
TIME_MIN = -(2**62)
TIME_MAX = 2**62

identities = sa.Table(
    "identities",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("namespace", sa.String(8), nullable=False),  # "wa" (phone digits) or "bsuid"
    sa.Column("blind_index", sa.String(64), nullable=False),
    sa.Column("subject", sa.String(40), nullable=False),
    sa.Column("valid_from", sa.BigInteger, nullable=False),  # unix µs, inclusive; TIME_MIN = always
    sa.Column("valid_to", sa.BigInteger, nullable=False),  # unix µs, exclusive; TIME_MAX = still valid
    sa.Column("evidence", sa.String(400), nullable=False),  # natural key of the event that bound it
    sa.Column("created_at", Ts, nullable=False),
    sa.UniqueConstraint("namespace", "blind_index", "valid_from", name="uq_identities_start"),
    sa.Index("ix_identities_subject", "subject"),
)

media = sa.Table(
    "media",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("stream", sa.String(128), nullable=False),
    sa.Column("media_id", sa.String(128), nullable=False),
    sa.Column("wamid", sa.String(256)),
    sa.Column("message_key", sa.String(400), nullable=False),
    sa.Column("subject_key_id", sa.Text, nullable=False),
    sa.Column("meta_sha256", sa.String(128)),  # as Meta sent it (base64 or hex)
    sa.Column("url", sa.String(2048)),  # a direct URL from the webhook, when present
    sa.Column("mime_type", sa.String(128)),
    sa.Column("message_time", Ts),
    sa.Column("state", sa.String(16), nullable=False, server_default="pending"),  # pending|stored|gap
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", Ts, nullable=False),
    sa.Column("last_error", sa.String(200)),
    sa.Column("object_key", sa.String(512)),
    sa.Column("version_id", sa.String(128)),
    sa.Column("retain_until", Ts),
    sa.Column("disposed_at", Ts),
    sa.Column("disposition_id", sa.String(26)),
    sa.Column("size", sa.BigInteger),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("updated_at", Ts, nullable=False),
    sa.UniqueConstraint("stream", "media_id", name="uq_media_stream_id"),
    sa.Index("ix_media_due", "state", "next_attempt_at"),
)

MIGRATIONS = Path(__file__).parent / "migrations"


def stream_tenant(conn: sa.Connection, stream: str) -> str | None:
    """The tenant (WABA id) the stream is bound to; None while it is bound to none."""
    return conn.execute(sa.select(stream_tenants.c.tenant).where(stream_tenants.c.stream == stream)).scalar()


def bind_stream(conn: sa.Connection, stream: str, tenant: str, evidence: str) -> str:
    """Bind `stream` to `tenant` unless it is bound already; returns the tenant it is bound to."""
    insert_ignore(conn, stream_tenants, [{"stream": stream, "tenant": tenant, "bound_at": utcnow(),
                                          "evidence": evidence[:200]}])
    bound = stream_tenant(conn, stream)
    assert bound is not None
    return bound


def make_engine(url: str) -> sa.Engine:
    """Engine with the settings each backend needs for a durable, concurrent inbox."""
    # hide_parameters: error messages (which reach logs) never carry bound values.
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                                  hide_parameters=True)

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn: Any, _record: Any) -> None:  # the DB-API connection, its pool record
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers never block the inbox writer
            cur.execute("PRAGMA synchronous=FULL")  # a committed webhook survives power loss
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # every session in UTC: reports group instants by day and month in SQL (date(), substr of the
    # text form), which a server's own time zone would shift
    return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10, hide_parameters=True,
                            connect_args={"options": "-c timezone=UTC"})


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
