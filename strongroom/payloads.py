"""Meta-shaped webhook bodies built in code: for `strongroom demo`, the benchmarks and the tests
(fixed payloads live in tests/fixtures/).

Shapes follow docs/reference/whatsapp-webhooks.md. Bodies are serialised the way Meta sends them:
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
        m: dict[str, Any] = {"from": sender, "id": f"wamid.HIST{i:08d}", "timestamp": str(ts)}
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


def preference(wa_id: str, value: str, ts: int) -> bytes:
    item = {"wa_id": wa_id, "detail": f"User requested to {value} marketing messages",
            "category": "marketing_messages", "value": value, "timestamp": ts}
    return body(envelope(change("user_preferences", {"user_preferences": [item]})))


def template_status(event: str, name: str, language: str, time: int, category: str = "MARKETING",
                    reason: str | None = "NONE") -> bytes:
    return body(envelope(change("message_template_status_update", {
        "event": event, "message_template_id": 1689556908129835, "message_template_name": name,
        "message_template_language": language, "reason": reason, "message_template_category": category}, pnid=None),
        time=time))


def template_category(name: str, language: str, time: int, previous: str, new: str) -> bytes:
    return body(envelope(change("template_category_update", {
        "message_template_id": 278077987957091, "message_template_name": name, "message_template_language": language,
        "previous_category": previous, "new_category": new}, pnid=None), time=time))


def template_components(name: str, language: str, time: int, element: str) -> bytes:
    return body(envelope(change("message_template_components_update", {
        "message_template_id": 12345678, "message_template_name": name, "message_template_language": language,
        "message_template_element": element}, pnid=None), time=time))


def send(wamid: str, to: str, ts: int, template: tuple[str, str] | None = None, words: str = "hi") -> dict[str, Any]:
    """One entry of the sending system's log: the Cloud API request, Meta's response, the time."""
    from datetime import UTC, datetime

    request: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to}
    if template:
        request.update(type="template", template={"name": template[0], "language": {"code": template[1]}})
    else:
        request.update(type="text", text={"body": words})
    return {"phone_number_id": PNID, "tenant": WABA, "request": request,
            "response": {"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}],
                         "messages": [{"id": wamid}]},
            "sent_at": datetime.fromtimestamp(ts, UTC).isoformat()}
