"""Records as reviewers see them: decrypted views, and conversations rebuilt as threads.

Shared by the auditor API and the export bundles, so a thread looks the same on screen and in
a production: messages in time order, each with its statuses, edits and revokes (as versions),
reactions and attachments (media records, which carry the message's wamid but no conversation),
provenance, and the gap markers of the numbers involved.
"""

from __future__ import annotations

import base64
import json
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from archiver.db import events
from archiver.errors import KeyDestroyedError
from archiver.keys import KeyRing
from archiver.sqlutil import as_utc

ATTACHED_TYPES = ("edit", "revoke", "reaction")
GAP_KINDS = ("gap", "gap_closed")


def content(keyring: KeyRing, r: Any) -> Any:
    """The decrypted content of an events row; markers when disposed or erased."""
    if r.content is None:
        return {"disposed": True} if r.segment_id is not None else None
    try:
        data = keyring.open_record(r)
    except KeyDestroyedError:
        return {"erased": True}
    try:
        return json.loads(data)
    except ValueError:
        return {"raw_base64": base64.b64encode(data).decode()}


def record_view(keyring: KeyRing, r: Any) -> dict[str, Any]:
    return {"id": f"{r.stream}/{r.seq}" if r.seq is not None else None, "stream": r.stream, "seq": r.seq,
            "kind": r.kind, "natural_key": r.natural_key, "tenant": r.tenant, "field": r.field, "wamid": r.wamid,
            "ref_wamid": r.ref_wamid, "conversation": r.conversation, "direction": r.direction,
            "origin": r.origin, "sender": r.sender, "recipient": r.recipient, "type": r.type,
            "status": r.status, "template_name": r.template_name, "template_language": r.template_language,
            "event_time": as_utc(r.event_time), "received_at": as_utc(r.received_at), "modelled": r.modelled,
            "sealed": r.seq is not None, "content": content(keyring, r)}


def thread_rows(conn: sa.Connection, conversation: str, visible: Callable[[str | None], bool],
                stream: str | None = None, start: datetime | None = None, end: datetime | None = None,
                sealed_only: bool = False) -> tuple[list[Any], list[Any]]:
    """(records of the conversation with the media records of its messages, gap records of its numbers)."""
    q = sa.select(events).where(events.c.conversation == conversation)
    if stream:
        q = q.where(events.c.stream == stream)
    if start:
        q = q.where(events.c.event_time >= start)
    if end:
        q = q.where(events.c.event_time < end)
    if sealed_only:
        q = q.where(events.c.seq.is_not(None))
    rows = [r for r in conn.execute(q.order_by(events.c.event_time, events.c.id)) if visible(r.tenant)]
    numbers = sorted({r.stream for r in rows})
    wamids = sorted({r.wamid for r in rows if r.kind == "message" and r.wamid})
    # `seq IS NOT NULL` and `conversation IS NULL` are checked here, not in SQL: given them, SQLite's
    # planner (no statistics) walks the (stream, seq) or conversation index instead of the narrow one
    attached: list[Any] = []
    for i in range(0, len(wamids), 500):
        attached += [r for r in conn.execute(sa.select(events).where(
            events.c.stream.in_(numbers), events.c.kind.in_(["media", "gap"]),
            events.c.ref_wamid.in_(wamids[i:i + 500])))
            if r.conversation is None and (r.seq is not None or not sealed_only)]
    lo = min((as_utc(r.event_time) for r in rows if r.event_time), default=None)
    hi = max((as_utc(r.event_time) for r in rows if r.event_time), default=None)
    gaps: list[Any] = []
    if numbers and lo is not None and hi is not None:
        gaps = [r for r in conn.execute(sa.select(events).where(
            events.c.stream.in_(numbers), events.c.kind.in_(GAP_KINDS),
            sa.or_(events.c.type.is_(None), events.c.type != "media_unavailable"),
            events.c.event_time >= lo - timedelta(days=1), events.c.event_time <= hi + timedelta(days=1)))
            if r.conversation is None and (r.seq is not None or not sealed_only)]
    return sorted(rows + attached, key=lambda r: (as_utc(r.event_time) or _MIN, r.id)), gaps


_MIN = datetime.min.replace(tzinfo=UTC)


def thread_items(keyring: KeyRing, rows: list[Any], gaps: list[Any]) -> list[dict[str, Any]]:
    """Thread items in time order: messages (with statuses, versions, reactions, attachments,
    provenance) and markers (gaps, and anything that refers to a message not archived)."""
    items: list[dict[str, Any]] = []
    by_wamid: dict[str, dict[str, Any]] = {}
    attached: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        view = record_view(keyring, r)
        if r.kind == "message" and r.type not in ATTACHED_TYPES:
            item = {"row": r.id, "at": view["event_time"], "record": view, "provenance": {
                "origin": r.origin, "field": r.field, "received_at": view["received_at"],
                "envelope_sha256": r.envelope_sha256, "sealed": view["sealed"]},
                "statuses": [], "versions": [], "reactions": [], "attachments": [], "revoked": False}
            items.append(item)
            if r.wamid and r.wamid not in by_wamid:
                by_wamid[r.wamid] = item
        elif r.kind in ("status", "media") or r.type in ATTACHED_TYPES or r.type == "media_unavailable":
            attached[r.ref_wamid or r.wamid or ""].append(view)
        else:
            items.append({"row": r.id, "at": view["event_time"], "record": view, "marker": r.kind})
    for wamid, views in attached.items():
        target = by_wamid.get(wamid)
        for v in views:
            if target is None:  # refers to a message not (yet) archived: keep it visible on its own
                items.append({"row": 0, "at": v["event_time"], "record": v, "marker": "orphan"})
            elif v["kind"] == "status":
                target["statuses"].append(v)
            elif v["kind"] in ("media", "gap"):
                target["attachments"].append(v)
            elif v["type"] == "reaction":
                target["reactions"].append(v)
            else:
                target["versions"].append(v)
                target["revoked"] = target["revoked"] or v["type"] == "revoke"
    for g in gaps:
        view = record_view(keyring, g)
        items.append({"row": g.id, "at": view["event_time"], "record": view, "marker": g.kind})
    items.sort(key=lambda it: (it["at"] or _MIN, it["row"]))
    return items
