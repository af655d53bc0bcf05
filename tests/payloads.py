"""Meta-shaped webhook bodies built in code (for scenarios; fixed payloads live in fixtures/).

Shapes follow ../shared/whatsapp-webhooks.md. Bodies are serialised the way Meta sends them:
compact, non-ASCII escaped as \\uXXXX.
"""

from __future__ import annotations

import json
import random
from typing import Any

WABA = "102290129340398"
PNID = "106540352242922"
BUSINESS = "15550783881"


def body(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def envelope(*changes: dict[str, Any], waba: str = WABA, time: int | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": waba, "changes": list(changes)}
    if time is not None:
        entry["time"] = time
    return {"object": "whatsapp_business_account", "entry": [entry]}


def change(field: str, value: dict[str, Any], pnid: str | None = PNID) -> dict[str, Any]:
    if pnid is not None:
        value = {"messaging_product": "whatsapp",
                 "metadata": {"display_phone_number": BUSINESS, "phone_number_id": pnid}, **value}
    return {"value": value, "field": field}


def text(wamid: str, sender: str, ts: int, words: str, **extra: Any) -> dict[str, Any]:
    return {"from": sender, "id": wamid, "timestamp": str(ts), "type": "text", "text": {"body": words}, **extra}


def image(wamid: str, sender: str, ts: int, media_id: str, sha256: str, **extra: Any) -> dict[str, Any]:
    return {"from": sender, "id": wamid, "timestamp": str(ts), "type": "image",
            "image": {"mime_type": "image/jpeg", "sha256": sha256, "id": media_id, **extra}}


def inbound(*msgs: dict[str, Any], name: str = "Pat") -> bytes:
    contacts = [{"profile": {"name": name}, "wa_id": m["from"]} for m in msgs if m.get("from")]
    value: dict[str, Any] = {"messages": list(msgs)}
    if contacts:
        value = {"contacts": contacts[:1], **value}
    return body(envelope(change("messages", value)))


def statuses(*items: tuple[str, str, str, int]) -> bytes:
    """(wamid, recipient, status, ts) statuses for API-sent messages."""
    sts = [{"id": w, "recipient_id": r, "status": s, "timestamp": str(t)} for w, r, s, t in items]
    return body(envelope(change("messages", {"statuses": sts})))


def echo(wamid: str, to: str, ts: int, words: str) -> bytes:
    msg = {"from": BUSINESS, "to": to, "id": wamid, "timestamp": str(ts), "type": "text", "text": {"body": words}}
    return body(envelope(change("smb_message_echoes", {"message_echoes": [msg]})))


def system_changed_number(wamid: str, old: str, new: str, ts: int) -> bytes:
    msg = {"from": old, "id": wamid, "timestamp": str(ts), "type": "system",
           "system": {"body": f"User changed from {old} to {new}", "wa_id": new, "type": "user_changed_number"}}
    return body(envelope(change("messages", {"messages": [msg]})))


def account_update(event: str, time: int, **extra: Any) -> bytes:
    return body(envelope(change("account_update", {"event": event, **extra}, pnid=None), time=time))


def history_chunk(phase: int, order: int, progress: int, threads: dict[str, list[dict[str, Any]]]) -> bytes:
    chunk = {"metadata": {"phase": phase, "chunk_order": order, "progress": progress},
             "threads": [{"id": k, "messages": v} for k, v in threads.items()]}
    return body(envelope(change("history", {"history": [chunk]})))


def busy_history(messages: int, per_chunk: int, contacts: int = 2000, start: int = 1_720_000_000,
                 seed: int = 7) -> list[bytes]:
    """Six months of a busy number's history as chunk bodies (phases by age, chunk_order per phase).

    Messages alternate between the business and its contacts, some as media placeholders.
    """
    rng = random.Random(seed)
    span = 180 * 86400
    words = ("please confirm the trade", "bitte rufen Sie mich zur\u00fcck", "merci", "ok \U0001f44d",
             "the order for 300 shares is filled", "send me the statement")
    msgs = []
    for i in range(messages):
        ts = start + (i * span) // messages
        peer = f"1650{rng.randint(0, contacts - 1):07d}"
        sender = BUSINESS if i % 2 else peer
        m = {"from": sender, "id": f"wamid.HIST{i:08d}", "timestamp": str(ts)}
        if i % 17 == 0:
            m.update(type="media_placeholder")
        else:
            m.update(type="text", text={"body": f"{rng.choice(words)} #{i}"})
        m["history_context"] = {"status": "READ"}
        msgs.append((peer, m))
    bodies = []
    n_chunks = (messages + per_chunk - 1) // per_chunk
    for c in range(n_chunks):
        part = msgs[c * per_chunk:(c + 1) * per_chunk]
        age = (start + span - int(part[0][1]["timestamp"])) // 86400
        phase = 0 if age < 1 else 1 if age < 90 else 2
        threads: dict[str, list[dict[str, Any]]] = {}
        for peer, m in part:
            threads.setdefault(peer, []).append(m)
        bodies.append(history_chunk(phase, c + 1, (100 * (c + 1)) // n_chunks, threads))
    return bodies
