"""Capture of messages the business sends through the Cloud API.

Meta sends no webhook with the content of an API send — only statuses — so without this the
archive holds nothing but a gap for every API message. The sending system hands us each send
as it happened: the request body it POSTed to ``/{phone-number-id}/messages``, Meta's response
(which carries the wamid) and the send time. Each becomes a sealed outbound ``message`` record
(origin ``api``) keyed ``message:<wamid>`` like every other message, so its statuses reconcile
against it, and template sends carry the template name and language for the compliance checks.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from archiver.db import events, stream_tenant
from archiver.errors import Forbidden, InvalidInput
from archiver.identity import IdentityBook
from archiver.keys import KeyRing
from archiver.kinds import key_part, obj, parse_unix
from archiver.normalize import EventBuilder, append_events, new_people, retry_on_race, store_people, stream_for
from archiver.records import canonical_json
from archiver.sqlutil import utcnow


class SendError(InvalidInput):
    """A send-log entry that does not describe a send."""


class NotYours(Forbidden, SendError):
    """A send to a number that is not the writer's tenant's (or nobody's yet)."""


def _parse(item: dict[str, Any]) -> tuple[str, str, dict[str, Any], str, datetime]:
    try:
        canonical_json(item)  # what is sealed: refused here, never halfway through a batch
    except (ValueError, UnicodeError, TypeError) as e:
        raise SendError("a send-log entry must be valid Unicode JSON with integers within ±2^53 "
                        f"({type(e).__name__})") from e
    request = item.get("request")
    response = item.get("response")
    if not isinstance(request, dict) or not isinstance(response, dict):
        raise SendError("a send needs the request body and Meta's response")
    msgs = response.get("messages")
    wamid = msgs[0].get("id") if isinstance(msgs, list) and msgs and isinstance(msgs[0], dict) else None
    to = request.get("to") or request.get("recipient")
    if not isinstance(wamid, str) or not wamid:
        raise SendError("the response carries no message id (was the send accepted?)")
    if not isinstance(to, str) or not to:
        raise SendError("the request names no recipient")
    sent = item.get("sent_at")
    try:
        at = datetime.fromisoformat(sent) if isinstance(sent, str) else parse_unix(sent)
    except ValueError as e:
        raise SendError(f"sent_at {sent!r} is not an ISO-8601 time") from e
    if at is None or at.tzinfo is None:
        raise SendError("sent_at must be a UTC-aware time")
    stream = stream_for({"metadata": {"phone_number_id": item.get("phone_number_id")}}, None)
    if stream == "unrouted":
        raise SendError("phone_number_id is missing or not an id")
    return stream, to, request, wamid, at


class SendLog:
    def __init__(self, engine: sa.Engine, keyring: KeyRing) -> None:
        self.engine = engine
        self.keyring = keyring
        self.identities = IdentityBook(engine)

    def record(self, items: list[dict[str, Any]], tenant: str | None = None) -> int:
        """Archive a batch of sends (idempotent by wamid). Returns how many were new.

        Each send goes to a number already bound to a tenant (by its first signed webhook, or
        an administrator's registration): `tenant` is the writer's (an ingest key's), and a
        number of another tenant, or of none yet, is refused exactly alike. Without `tenant`
        (the server's own CLI) an entry's `tenant`, if given, must match the binding."""
        parsed = [_parse(i) for i in items]  # all or nothing: a bad entry fails the batch
        with self.engine.connect() as conn:
            bound = {stream: stream_tenant(conn, stream) for stream in {p[0] for p in parsed}}
        for (stream, *_), item in zip(parsed, items, strict=True):
            claimed = tenant or item.get("tenant")
            if bound[stream] is None or (claimed is not None and claimed != bound[stream]):
                whose = "your tenant" if tenant else f"tenant {claimed}" if claimed else "any tenant yet"
                raise NotYours(f"phone_number_id {stream} is not a number of {whose} (a number belongs to the "
                               "WABA its first signed webhook names, or to the one an administrator registered it "
                               "to with `strongroom numbers register`)")
        return retry_on_race(lambda: self._record(parsed, items, bound))

    def _record(self, parsed: list[tuple[str, str, dict[str, Any], str, datetime]], items: list[dict[str, Any]],
                bound: dict[str, str | None]) -> int:
        now = utcnow()
        with new_people(self.keyring, self.identities):
            b = EventBuilder(self.keyring, None, None, now, self.identities)
            for (stream, to, request, wamid, at), item in zip(parsed, items, strict=True):
                b.evidence = f"message:{key_part(wamid)}"
                person = b.person(to, None, at)
                template = obj(request.get("template"))
                language = template.get("language")
                lang = language.get("code") if isinstance(language, dict) else language
                b.add(stream, f"message:{key_part(wamid)}", "message", canonical_json(item), person.key_ids,
                      tenant=bound[stream], field="send_log", wamid=wamid, conversation=person.subject,
                      direction="outbound", origin="api", recipient=person.bi, type=request.get("type") or "text",
                      template_name=template.get("name"), template_language=lang, event_time=at)
                b.seal_identity_changes(stream)
            keys = [(stream, f"message:{key_part(wamid)}") for stream, _, _, wamid, _ in parsed]
            with self.engine.begin() as conn:
                known = {(r.stream, r.natural_key) for r in conn.execute(sa.select(events.c.stream, events.c.natural_key)
                                                                          .where(sa.tuple_(events.c.stream,
                                                                                           events.c.natural_key).in_(keys)))}
                store_people(conn, self.keyring, self.identities)
                append_events(conn, b)
        return len(set(keys) - known)
