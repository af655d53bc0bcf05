"""Typed events for each webhook field (the second layer of normalisation).

Every change is archived raw first (`archiver.normalize`); a handler registered here for the
change's `field` adds typed events with queryable columns. A handler returns whether it
understood everything in the change; anything it did not is flagged ``modelled = False`` and
stays complete in the raw change. Field reference: docs/reference/whatsapp-webhooks.md.

| field | events |
|---|---|
| messages | ``message`` (inbound, origin api) per message; ``status`` per status; ``gap`` for 131060; ``webhook_error`` per value-level error |
| smb_message_echoes | ``message`` (outbound, origin app) |
| standby | ``message`` while Meta's AI agent holds the chat: inbound (origin api), agent replies (origin agent) |
| history | ``message`` (origin history, direction from the sender) per thread message; ``history_chunk``; ``gap`` for errors (2593109 = declined) |
| smb_app_state_sync | ``contact_sync`` (add/remove) |
| user_preferences | ``preference`` (marketing stop/resume) |
| message_template_* / template_category_update | ``template_event`` |
| account_update, phone_number_*, account_review_update, security | ``account_event`` |

People are resolved through time-bounded identities (`archiver.identity`): ``conversation`` is
the subject id, ``sender``/``recipient`` the blind-indexed number (or BSUID) used at the time.
A system "changed number" message moves the subject to the new number from its timestamp on.
Every media object on a message becomes a fetch job (`archiver.media`); every reference to
another message (reply context, reaction, edit, revoke) is kept in ``ref_wamid`` so the
reconciler can find referenced messages that were never archived.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

from archiver.records import canonical_json

_KEY_PART_MAX = 160

# Message types whose shape we model; others are still typed by type and ids, but flagged.
MODELLED_MESSAGE_TYPES = frozenset({
    "text", "image", "video", "audio", "document", "sticker", "location", "contacts", "interactive",
    "button", "reaction", "order", "system", "edit", "revoke", "media_placeholder",
})


MEDIA_TYPES = frozenset({"image", "video", "audio", "document", "sticker"})
CHANGED_NUMBER = frozenset({"user_changed_number", "customer_changed_number"})
# Coverage gaps WhatsApp itself reports: the content will never reach the API.
CONTENT_WITHHELD = 131060
HISTORY_DECLINED = 2593109


class Person(NamedTuple):
    bi: str | None  # blind index of the identifier used (phone, else BSUID)
    subject: str | None
    key_ids: list[str]


class EventSink(Protocol):
    def person(self, phone: Any, user_id: Any, at: datetime | None) -> Person: ...

    def rebind(self, namespace: str, old: str, new: str, at: datetime | None, evidence: str) -> None: ...

    def blind(self, phone: Any) -> str | None: ...

    def add(self, stream: str, natural_key: str, kind: str, content: bytes, key_ids: list[str],
            **cols: Any) -> None: ...

    def media(self, stream: str, media_id: str, wamid: Any, message_key: str, key_ids: list[str],
              obj: dict[str, Any], message_time: datetime | None) -> None: ...


@dataclass(frozen=True, slots=True)
class Change:
    stream: str
    tenant: str | None
    field: str
    value: dict[str, Any]
    key: str  # sha256 of the change's exact bytes
    entry_time: datetime | None


Handler = Callable[[EventSink, Change], bool]
HANDLERS: dict[str, Handler] = {}


def handles(*fields: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for f in fields:
            HANDLERS[f] = fn
        return fn

    return register


def parse_unix(value: Any) -> datetime | None:
    """WhatsApp timestamps: unix seconds as a string (messages) or an int (some fields)."""
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def obj(value: Any) -> dict[str, Any]:
    """`value` when it is a JSON object, else an empty one (webhook fields are untrusted shapes)."""
    return value if isinstance(value, dict) else {}


def arr(value: Any) -> list[Any]:
    """`value` when it is a JSON array, else an empty one."""
    return value if isinstance(value, list) else []


def key_part(value: Any) -> str:
    """A natural-key component: the value itself when it is a short string, else its hash."""
    if isinstance(value, str) and 0 < len(value) <= _KEY_PART_MAX and value.isprintable():
        return value
    return "sha256:" + hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _items(value: dict[str, Any], name: str) -> tuple[list[dict[str, Any]], bool]:
    """The dict items of an array field, and whether every item was a dict."""
    raw = value.get(name) or []
    if not isinstance(raw, list):
        return [], False
    items = [i for i in raw if isinstance(i, dict)]
    return items, len(items) == len(raw)


def _only(value: dict[str, Any], *known: str) -> bool:
    return not (set(value) - {"messaging_product", "metadata", "contacts", *known})


def _business(value: dict[str, Any]) -> str | None:
    metadata = value.get("metadata")
    return str(metadata.get("display_phone_number")) if isinstance(metadata, dict) and \
        metadata.get("display_phone_number") else None


def _ref(msg: dict[str, Any]) -> str | None:
    """The wamid a message refers to: edited/revoked original, reacted-to message, or reply."""
    for kind, name in (("edit", "original_message_id"), ("revoke", "original_message_id"),
                       ("reaction", "message_id"), ("context", "id")):
        ref = obj(msg.get(kind)).get(name)
        if isinstance(ref, str):
            return ref
    return None


def _media_objects(msg: dict[str, Any]) -> list[dict[str, Any]]:
    """Media objects of a message (or of the new version an edit carries)."""
    found = []
    for m in (msg, (msg.get("edit") or {}).get("message") if isinstance(msg.get("edit"), dict) else None):
        if isinstance(m, dict) and m.get("type") in MEDIA_TYPES and isinstance(m.get(m["type"]), dict):
            obj = m[m["type"]]
            if isinstance(obj.get("id"), str | int) or isinstance(obj.get("url"), str):
                found.append(obj)
    return found


def _message(sink: EventSink, c: Change, msg: dict[str, Any], idx: int, *, origin: str, direction: str,
             contact_phone: Any, contact_user_id: Any, contact: Any, key_prefix: str = "message",
             status: Any = None, provenance: dict[str, Any] | None = None) -> bool:
    at = parse_unix(msg.get("timestamp"))
    p = sink.person(contact_phone, contact_user_id, at)
    business_bi = sink.blind(_business(c.value))
    mtype = msg.get("type")
    wamid = msg.get("id")
    errors = arr(msg.get("errors"))
    modelled = mtype in MODELLED_MESSAGE_TYPES and not errors
    natural_key = f"{key_prefix}:{key_part(wamid)}" if wamid else f"{key_prefix}:{c.key}:{idx}"
    cols = dict(tenant=c.tenant, field=c.field, conversation=p.subject, direction=direction, origin=origin,
                sender=p.bi if direction == "inbound" else business_bi,
                recipient=business_bi if direction == "inbound" else p.bi, event_time=at)
    content = {"message": msg, "contact": contact}
    if provenance is not None:
        content["history"] = provenance  # phase, chunk order, progress of the import that carried it
    sink.add(c.stream, natural_key, "message", canonical_json(content), p.key_ids,
             wamid=wamid, ref_wamid=_ref(msg), type=mtype, status=status, modelled=modelled, **cols)
    for obj in _media_objects(msg):
        sink.media(c.stream, str(obj.get("id") or "url:" + key_part(obj.get("url"))), wamid, natural_key,
                   p.key_ids, obj, at)
    for err in errors:
        if isinstance(err, dict) and err.get("code") == CONTENT_WITHHELD:
            # Coexistence: WhatsApp kept this message's content in the Business App only.
            sink.add(c.stream, f"gap:withheld:{key_part(wamid)}", "gap",
                     canonical_json({"gap": "content_withheld", "error": err, "wamid": wamid}), p.key_ids,
                     wamid=wamid, ref_wamid=wamid, type="content_withheld", status="permanent", **cols)
    return modelled

def _contacts(value: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for contact in _items(value, "contacts")[0]:
        for ident in (contact.get("wa_id"), contact.get("user_id")):
            if ident:
                found[str(ident)] = contact
    return found


def _live(sink: EventSink, c: Change, msgs: list[dict[str, Any]], contacts: dict[str, Any], *,
          origin: str, direction: str) -> bool:
    """Typed events for live messages; the contact is the sender (inbound) or recipient (outbound)."""
    phone_field, user_field = ("from", "from_user_id") if direction == "inbound" else ("to", "to_user_id")
    modelled = True
    for idx, msg in enumerate(msgs):
        who = msg.get(phone_field) or msg.get(user_field)
        phone, user = msg.get(phone_field), msg.get(user_field)
        if msg.get("type") == "system" and direction == "inbound":
            phone, user = _identity_change(sink, msg, phone, user)
        modelled &= _message(sink, c, msg, idx, origin=origin, direction=direction,
                             contact_phone=phone, contact_user_id=user, contact=contacts.get(str(who)))
    return modelled


def _identity_change(sink: EventSink, msg: dict[str, Any], phone: Any, user: Any) -> tuple[Any, Any]:
    """Apply a system identity change; returns the identifiers the person has from now on."""
    system = obj(msg.get("system"))
    stype, at, evidence = system.get("type"), parse_unix(msg.get("timestamp")), f"message:{key_part(msg.get('id'))}"
    new_phone = system.get("wa_id") or system.get("new_wa_id")
    if stype in CHANGED_NUMBER and phone and new_phone:
        sink.rebind("wa", str(phone), str(new_phone), at, evidence)
        return new_phone, user
    previous = system.get("previous_user_id")
    new_user = user or system.get("user_id")
    if stype == "user_changed_user_id" and previous and new_user:
        sink.rebind("bsuid", str(previous), str(new_user), at, evidence)
        return phone, new_user
    return phone, user


@handles("messages")
def messages(sink: EventSink, c: Change) -> bool:
    contacts = _contacts(c.value)
    msgs, ok_m = _items(c.value, "messages")
    sts, ok_s = _items(c.value, "statuses")
    errs, ok_e = _items(c.value, "errors")
    modelled = ok_m and ok_s and ok_e and _only(c.value, "messages", "statuses", "errors")
    modelled &= _live(sink, c, msgs, contacts, origin="api", direction="inbound")
    for n, err in enumerate(errs):  # value-level errors: something WhatsApp could not deliver to us
        sink.add(c.stream, f"webhook_error:{c.key}:{n}", "webhook_error", canonical_json({"error": err}), [],
                 tenant=c.tenant, field=c.field, type=str(err.get("code")), event_time=c.entry_time)
    business_bi = sink.blind(_business(c.value))
    for st in sts:
        wamid, status, ts = st.get("id"), st.get("status"), st.get("timestamp")
        p = sink.person(st.get("recipient_id"), st.get("recipient_user_id"), parse_unix(ts))
        sink.add(
            c.stream, f"status:{key_part(wamid)}:{key_part(status)}:{key_part(ts)}", "status",
            canonical_json({"status": st}), p.key_ids, tenant=c.tenant, field=c.field,
            wamid=wamid, conversation=p.subject, direction="outbound", origin="api", sender=business_bi,
            recipient=p.bi, status=status, event_time=parse_unix(ts),
        )
    return modelled


@handles("smb_message_echoes")
def echoes(sink: EventSink, c: Change) -> bool:
    """Messages the business sent from the WhatsApp Business App (or a companion device)."""
    contacts = _contacts(c.value)
    msgs, ok = _items(c.value, "message_echoes")
    modelled = ok and _only(c.value, "message_echoes")
    return _live(sink, c, msgs, contacts, origin="app", direction="outbound") and modelled


@handles("standby")
def standby(sink: EventSink, c: Change) -> bool:
    """Meta Business Agent conversations: user messages and the agent's replies (as echoes)
    arrive on `standby` instead of `messages`; without this they would be a capture gap."""
    contacts = _contacts(c.value)
    msgs, ok_m = _items(c.value, "messages")
    replies, ok_r = _items(c.value, "message_echoes")
    modelled = ok_m and ok_r and _only(c.value, "messages", "message_echoes")
    modelled &= _live(sink, c, msgs, contacts, origin="api", direction="inbound")
    modelled &= _live(sink, c, replies, contacts, origin="agent", direction="outbound")
    return modelled


@handles("history")
def history(sink: EventSink, c: Change) -> bool:
    """The one-time coexistence backfill: provenance `history`, never shown as live capture."""
    business = _business(c.value)
    chunks, ok = _items(c.value, "history")
    modelled = ok and _only(c.value, "history", "messages")
    for n, chunk in enumerate(chunks):
        meta = obj(chunk.get("metadata"))
        for err in chunk.get("errors") or []:
            code = err.get("code") if isinstance(err, dict) else None
            gap = "history_declined" if code == HISTORY_DECLINED else f"history_error:{key_part(code)}"
            # A declined share is the backfill's terminal state: no history will ever arrive.
            sink.add(c.stream, f"gap:{gap}:{c.key}:{n}", "gap",
                     canonical_json({"gap": gap, "error": err, "metadata": meta}), [], tenant=c.tenant,
                     field=c.field, type=gap, status="permanent", event_time=c.entry_time)
        if "chunk_order" in meta or "progress" in meta:
            phase, order, progress = meta.get("phase"), meta.get("chunk_order"), meta.get("progress")
            sink.add(c.stream, f"history_chunk:{key_part(phase)}:{key_part(order)}:{c.key}", "history_chunk",
                     canonical_json({"metadata": meta}), [], tenant=c.tenant, field=c.field,
                     type=f"phase:{phase}", status=f"chunk:{order}:progress:{progress}", event_time=c.entry_time)
        threads = chunk.get("threads") or []
        for thread in threads if isinstance(threads, list) else []:
            if not isinstance(thread, dict):
                modelled = False
                continue
            for idx, msg in enumerate(thread.get("messages") or []):
                if not isinstance(msg, dict):
                    modelled = False
                    continue
                outbound = business is not None and str(msg.get("from")) == business
                status = (msg.get("history_context") or {}).get("status") \
                    if isinstance(msg.get("history_context"), dict) else None
                modelled &= _message(sink, c, msg, idx, origin="history",
                                     direction="outbound" if outbound else "inbound", contact_phone=thread.get("id"),
                                     contact_user_id=None, contact=None, status=status, provenance=meta)
    # Media follow-ups for placeholders arrive on field `history` as `value.messages[]`.
    msgs, ok_m = _items(c.value, "messages")
    for idx, msg in enumerate(msgs):
        outbound = business is not None and str(msg.get("from")) == business
        modelled &= ok_m and _message(
            sink, c, msg, idx, origin="history", direction="outbound" if outbound else "inbound",
            contact_phone=msg.get("to") if outbound else msg.get("from"), contact_user_id=None, contact=None,
            key_prefix="history_media", provenance={"media_follow_up": True})
    return modelled


@handles("smb_app_state_sync")
def state_sync(sink: EventSink, c: Change) -> bool:
    items, ok = _items(c.value, "state_sync")
    modelled = ok and _only(c.value, "state_sync")
    for item in items:
        contact = obj(item.get("contact"))
        ts = (item.get("metadata") or {}).get("timestamp") if isinstance(item.get("metadata"), dict) else None
        p = sink.person(contact.get("phone_number"), None, parse_unix(ts))
        action = item.get("action")
        sink.add(c.stream, f"contact_sync:{key_part(p.bi)}:{key_part(action)}:{key_part(ts)}", "contact_sync",
                 canonical_json({"state_sync": item}), p.key_ids, tenant=c.tenant, field=c.field,
                 conversation=p.subject, recipient=p.bi, origin="app", type=item.get("type"), status=action,
                 event_time=parse_unix(ts), modelled=action in ("add", "remove"))
        modelled &= action in ("add", "remove")
    return modelled


@handles("user_preferences")
def preferences(sink: EventSink, c: Change) -> bool:
    items, ok = _items(c.value, "user_preferences")
    for item in items:
        category, value, ts = item.get("category"), item.get("value"), item.get("timestamp")
        p = sink.person(item.get("wa_id"), item.get("user_id"), parse_unix(ts))
        sink.add(c.stream, f"preference:{key_part(p.bi)}:{key_part(category)}:{key_part(value)}:{key_part(ts)}",
                 "preference", canonical_json({"preference": item}), p.key_ids,
                 tenant=c.tenant, field=c.field, conversation=p.subject, sender=p.bi, type=category, status=value,
                 event_time=parse_unix(ts))
    return ok and _only(c.value, "user_preferences")


@handles("message_template_status_update", "message_template_quality_update", "template_category_update",
         "message_template_components_update")
def template_event(sink: EventSink, c: Change) -> bool:
    v = c.value
    status = v.get("event") or v.get("new_quality_score") or v.get("new_category")
    name, lang = v.get("message_template_name"), v.get("message_template_language")
    sink.add(c.stream, f"template_event:{c.key}", "template_event", canonical_json({"value": v}), [],
             tenant=c.tenant, field=c.field, type=c.field, status=status if isinstance(status, str) else None,
             template_name=name if isinstance(name, str) else None,
             template_language=lang if isinstance(lang, str) else None, event_time=c.entry_time)
    return isinstance(name, str)


@handles("account_update", "phone_number_quality_update", "phone_number_name_update", "account_review_update",
         "security")
def account_event(sink: EventSink, c: Change) -> bool:
    status = c.value.get("event") or c.value.get("decision")
    sink.add(c.stream, f"account_event:{c.key}", "account_event", canonical_json({"value": c.value}), [],
             tenant=c.tenant, field=c.field, type=c.field, status=status if isinstance(status, str) else None,
             event_time=c.entry_time)
    return isinstance(status, str)


def subjects_of(sink: EventSink, value: dict[str, Any]) -> list[str]:
    """Data key ids of every WhatsApp user a change mentions (its raw bytes are about all of them)."""
    people: list[tuple[Any, Any]] = []
    pairs = {"contacts": ("wa_id", "user_id"), "messages": ("from", "from_user_id"),
             "statuses": ("recipient_id", "recipient_user_id"), "message_echoes": ("to", "to_user_id"),
             "user_preferences": ("wa_id", "user_id")}
    for name, (phone, user) in pairs.items():
        people += [(i.get(phone), i.get(user)) for i in _items(value, name)[0]]
    for chunk in _items(value, "history")[0]:
        people += [(t.get("id"), None) for t in chunk.get("threads") or [] if isinstance(t, dict)]
    for item in _items(value, "state_sync")[0]:
        contact = item.get("contact")
        people += [(contact.get("phone_number"), None)] if isinstance(contact, dict) else []
    return [k for phone, user_id in people for k in sink.person(phone, user_id, None).key_ids]
