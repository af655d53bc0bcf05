"""RSMF 2.0 (Relativity Short Message Format): one EML per conversation slice.

An RFC 5322 message with ``X-RSMF-*`` headers, a text body (the events in time order: Relativity's
extracted text) and exactly one attachment, ``rsmf.zip``, holding ``rsmf_manifest.json`` and every
attachment at the zip root. Output is deterministic (boundary, dates and zip entry times derive
from the content), so re-exporting a slice gives the same bytes. Reference:
docs/reference/ediscovery-formats.md §1; schema: tests/rsmf/rsmf_schema_2_0_0.json.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import mimetypes
import quopri
import re
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.header import Header
from email.utils import format_datetime, formataddr
from typing import Any

from exporters.verify_bundle import shown_text

CRLF = "\r\n"
VERSION = "2.0.0"
MAX_EVENTS = 10_000  # Relativity's guidance per file


@dataclass
class Attachment:
    name: str  # file name inside rsmf.zip (and the native's extension)
    display: str
    data: bytes
    mime_type: str | None


@dataclass
class Slice:
    """One RSMF file's worth of a conversation: items of `audit.views.thread_items`."""

    conversation: str
    business: str  # the number (phone number id): the custodian
    contact: str  # display of the other party (their number when known)
    day: str  # YYYY-MM-DD (UTC)
    part: int
    parts: int
    items: list[dict[str, Any]]
    attachments: dict[str, Attachment] = field(default_factory=dict)  # media natural_key -> file
    generator: str = "strongroom"


@dataclass
class RsmfFile:
    eml: bytes
    manifest: dict[str, Any]
    text: str
    event_count: int
    attachments: list[Attachment]
    event_ids: list[str]


def _ts(t: datetime | None) -> str | None:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t else None


def attachment_name(media_view: dict[str, Any], n: int) -> str:
    c = media_view.get("content") or {}
    ext = mimetypes.guess_extension((c.get("mime_type") or "").split(";")[0].strip()) or ".bin"
    base = re.sub(r"[^A-Za-z0-9._-]", "_", str(c.get("media_id") or media_view.get("natural_key") or "media"))
    return f"{base[:80]}-{n}{ext}"


def _body_of(view: dict[str, Any]) -> str:
    return shown_text(view.get("content"))


def build(s: Slice) -> RsmfFile:
    biz = f"P-biz-{s.business}"
    contact = f"P-{s.conversation}"
    participants = [{"id": biz, "display": f"WhatsApp Business {s.business}", "account_id": s.business},
                    {"id": contact, "display": s.contact or s.conversation, "account_id": s.contact or s.conversation}]
    conv_id = f"C-{s.conversation}"
    events: list[dict[str, Any]] = []
    text: list[str] = []
    used: list[Attachment] = []
    wamids = {it["record"]["wamid"] for it in s.items if "marker" not in it}
    for it in s.items:
        rec = it["record"]
        eid = rec["wamid"] or rec["natural_key"]
        ev: dict[str, Any] = {"id": eid, "conversation": conv_id, "timestamp": _ts(rec["event_time"])}
        custom = [{"name": "record", "value": rec["id"] or rec["natural_key"]}, {"name": "kind", "value": rec["kind"]}]
        if "marker" in it:
            ev.update(type="unknown", body=f"[{it['marker']}: {rec['type'] or rec['kind']}]")
            custom.append({"name": "marker", "value": it["marker"]})
        else:
            outgoing = rec["direction"] == "outbound"
            ev.update(type="message", participant=biz if outgoing else contact,
                      direction="outgoing" if outgoing else "incoming", body=_body_of(rec))
            custom += [{"name": "wamid", "value": rec["wamid"] or ""}, {"name": "origin", "value": rec["origin"] or ""},
                       {"name": "type", "value": rec["type"] or ""}]
            if rec["template_name"]:
                custom.append({"name": "template", "value": rec["template_name"]})
            if rec["ref_wamid"]:
                if rec["ref_wamid"] in wamids:
                    ev["parent"] = rec["ref_wamid"]
                else:
                    custom.append({"name": "reply_to", "value": rec["ref_wamid"]})
            if it["revoked"]:
                ev["deleted"] = True
            edits = [v for v in it["versions"] if v["type"] == "edit"]
            if edits:
                previous = ev["body"]
                ev["edits"] = []
                for v in edits:
                    new = _body_of(v)
                    ev["edits"].append({"participant": ev["participant"], "timestamp": _ts(v["event_time"]),
                                        "previous": previous, "new": new})
                    previous = new
            emojis: dict[str, int] = {}
            for r in it["reactions"]:
                emoji = ((r.get("content") or {}).get("message") or {}).get("reaction", {}).get("emoji")
                if emoji:
                    emojis[emoji] = emojis.get(emoji, 0) + 1
            if emojis:
                ev["reactions"] = [{"value": e, "count": n, "participants": [contact]} for e, n in emojis.items()]
            receipts = [{"participant": biz if not outgoing else contact, "timestamp": _ts(st["event_time"]),
                         "action": st["status"]} for st in it["statuses"] if st["status"] in ("read", "delivered")]
            if receipts:
                ev["read_receipts"] = receipts
            files = [s.attachments[a["natural_key"]] for a in it["attachments"] if a["natural_key"] in s.attachments]
            gaps = [a for a in it["attachments"] if a["kind"] == "gap"]
            if files:
                ev["attachments"] = [{"id": f.name, "display": f.display, "size": len(f.data)} for f in files]
                used += files
            if gaps:
                custom.append({"name": "attachment_gap", "value": "media could not be fetched from Meta"})
        ev["custom"] = [c for c in custom if c["value"]]
        events.append({k: v for k, v in ev.items() if v is not None})
        who = "" if "marker" in it else (f"WhatsApp Business {s.business}" if ev.get("direction") == "outgoing"
                                         else participants[1]["display"])
        text.append(f"{who}\n{ev['timestamp'] or ''}\n{ev.get('body', '')}\n")
    collection = f"wa-{s.conversation}"
    manifest = {"version": VERSION, "eventcollectionid": collection, "participants": participants,
                "conversations": [{"id": conv_id, "display": f"{participants[1]['display']} / {participants[0]['display']}",
                                   "platform": "whatsapp", "type": "direct", "participants": [biz, contact],
                                   "custodian": biz}],
                "events": events}
    # compact: the C encoder (an indented manifest goes through the pure-Python one, 5x slower)
    manifest_bytes = json.dumps(manifest, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in [("rsmf_manifest.json", manifest_bytes)] + sorted((a.name, a.data) for a in used):
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    times = [e["timestamp"] for e in events if e.get("timestamp")]
    body = "\n".join(text)
    part = f" part {s.part}/{s.parts}" if s.parts > 1 else ""
    headers = [
        ("From", f"WhatsApp Business {s.business} <{s.business}@wa.invalid>"),
        # only the display name is RFC 2047-encoded when it is not ASCII, never the address
        ("To", formataddr((participants[1]["display"], f"{_local(participants[1]['account_id'])}@wa.invalid"))),
        ("Subject", f"WhatsApp: {participants[1]['display']} / {s.business} {s.day} (UTC){part}"),
        ("Date", format_datetime(datetime.fromisoformat(times[-1].replace("Z", "+00:00"))) if times else None),
        ("Message-ID", f"<{collection}.{s.day}.{s.part}@strongroom.invalid>"),
        ("MIME-Version", "1.0"),
        ("X-RSMF-Version", VERSION), ("X-RSMF-Generator", s.generator), ("X-RSMF-Application", "WhatsApp"),
        ("X-RSMF-Custodian", participants[0]["display"]),
        ("X-RSMF-Participants", f"{participants[0]['display']}, {participants[1]['display']}"),
        ("X-RSMF-BeginDate", times[0] if times else None), ("X-RSMF-EndDate", times[-1] if times else None),
        ("X-RSMF-EventCount", str(len(events))), ("X-RSMF-AttachmentCount", str(len(used))),
        ("X-RSMF-EventCollectionID", collection), ("X-RSMF-Slice", f"{s.day} UTC"),
        ("X-RSMF-Part", f"{s.part}/{s.parts}"),
        ("X-RSMF-SourceSHA256", hashlib.sha256(manifest_bytes).hexdigest()),
    ]
    boundary = "rsmf-" + hashlib.sha256(manifest_bytes).hexdigest()[:32]
    return RsmfFile(_mime(headers, boundary, body, zbuf.getvalue()), manifest, body, len(events), used,
                    [e["id"] for e in events])


def _header(name: str, value: str) -> bytes:
    """One header line, RFC 2047-encoded when not ASCII, folded by the email library."""
    if value.isascii() and len(value) < 900:
        return f"{name}: {value}\r\n".encode()
    return f"{name}: {Header(value, 'utf-8', header_name=name).encode(linesep=CRLF)}\r\n".encode()


def _mime(headers: list[tuple[str, str | None]], boundary: str, body: str, zip_bytes: bytes) -> bytes:
    """multipart/mixed: the text (UTF-8, quoted-printable) and rsmf.zip (base64): 7-bit throughout."""
    out = [_header(k, v) for k, v in headers if v is not None]
    out.append(f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'.encode())
    text = quopri.encodestring(body.encode(), quotetabs=False).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    out += [f"--{boundary}\r\n".encode(), b'Content-Type: text/plain; charset="utf-8"\r\n',
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n", text, b"\r\n",
            f"--{boundary}\r\n".encode(), b"Content-Type: application/zip; name=\"rsmf.zip\"\r\n",
            b"Content-Transfer-Encoding: base64\r\n", b'Content-Disposition: attachment; filename="rsmf.zip"\r\n\r\n',
            base64.encodebytes(zip_bytes).replace(b"\n", b"\r\n"), f"--{boundary}--\r\n".encode()]
    return b"".join(out)


def _local(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", value) or "unknown"
