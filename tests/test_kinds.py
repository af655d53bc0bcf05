"""Every webhook field gets typed events with the right columns; nothing is only typed.

Each case names a fixture in tests/fixtures/webhooks and the typed events it must produce
(kind, origin, direction, type, status, modelled). Every case also keeps the raw change.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from archiver.identity import IdentityBook
from archiver.normalize import build_events
from strongroom.runtime import Archive

NOW = datetime(2026, 11, 25, tzinfo=UTC)
T = tuple[str, str | None, str | None, str | None, str | None, bool]

CASES: dict[str, list[T]] = {
    "text_bsuid": [("message", "api", "inbound", "text", None, True)],
    "statuses": [("status", "api", "outbound", None, "sent", True), ("status", "api", "outbound", None, "read", True)],
    "echo_text": [("message", "app", "outbound", "text", None, True)],
    "echo_edit": [("message", "app", "outbound", "edit", None, True)],
    "echo_revoke": [("message", "app", "outbound", "revoke", None, True)],
    "inbound_edit": [("message", "api", "inbound", "edit", None, True)],
    "unsupported_131060": [("message", "api", "inbound", "unsupported", None, False),
                           ("gap", "api", "inbound", "content_withheld", "permanent", True)],
    "history_chunk": [("history_chunk", None, None, "phase:0", "chunk:1:progress:55", True),
                      ("message", "history", "outbound", "text", "READ", True),
                      ("message", "history", "outbound", "media_placeholder", "PLAYED", True),
                      ("message", "history", "inbound", "text", "READ", True)],
    "history_media": [("message", "history", "inbound", "image", None, True)],
    "history_declined": [("gap", None, None, "history_declined", "permanent", True)],
    "state_sync_add": [("contact_sync", "app", None, "contact", "add", True)],
    "state_sync_remove": [("contact_sync", "app", None, "contact", "remove", True)],
    "user_preferences_stop": [("preference", None, None, "marketing_messages", "stop", True)],
    "template_rejected": [("template_event", None, None, "message_template_status_update", "REJECTED", True)],
    "template_quality": [("template_event", None, None, "message_template_quality_update", "YELLOW", True)],
    "template_category": [("template_event", None, None, "template_category_update", "MARKETING", True)],
    "account_partner_removed": [("account_event", None, None, "account_update", "PARTNER_REMOVED", True)],
    "phone_name_rejected": [("account_event", None, None, "phone_number_name_update", "REJECTED", True)],
    "security_pin": [("account_event", None, None, "security", "PIN_RESET_REQUEST", True)],
    "standby_agent": [("message", "api", "inbound", "text", None, True),
                      ("message", "agent", "outbound", "text", None, True)],
    "image_with_url": [("message", "api", "inbound", "image", None, True)],
    "video_forwarded": [("message", "api", "inbound", "video", None, True)],
    "document": [("message", "api", "inbound", "document", None, True)],
    "audio_voice": [("message", "api", "inbound", "audio", None, True)],
    "sticker_animated": [("message", "api", "inbound", "sticker", None, True)],
    "location_pin": [("message", "api", "inbound", "location", None, True)],
    "contacts_card": [("message", "api", "inbound", "contacts", None, True)],
    "reaction": [("message", "api", "inbound", "reaction", None, True)],
    "unreaction": [("message", "api", "inbound", "reaction", None, True)],
    "interactive_button": [("message", "api", "inbound", "interactive", None, True)],
    "interactive_list": [("message", "api", "inbound", "interactive", None, True)],
    "interactive_flow": [("message", "api", "inbound", "interactive", None, True)],
    "template_button": [("message", "api", "inbound", "button", None, True)],
    "order": [("message", "api", "inbound", "order", None, True)],
    "referral_ctwa": [("message", "api", "inbound", "text", None, True)],
    "system_changed_number": [("message", "api", "inbound", "system", None, True)],
    "system_identity_changed": [("message", "api", "inbound", "system", None, True)],
    "system_user_id_changed": [("message", "api", "inbound", "system", None, True)],
    "unsupported_131051": [("message", "api", "inbound", "unsupported", None, False)],
    "value_errors": [("webhook_error", None, None, "131000", None, True)],
    "inbound_revoke": [("message", "api", "inbound", "revoke", None, True)],
    "status_failed_pmp": [("status", "api", "outbound", None, "failed", True),
                          ("status", "api", "outbound", None, "delivered", True)],
    "statuses_out_of_order": [("status", "api", "outbound", None, "read", True),
                              ("status", "api", "outbound", None, "sent", True)],
    "history_final_chunk": [("history_chunk", None, None, "phase:2", "chunk:3:progress:100", True),
                            ("message", "history", "inbound", "text", "DELIVERED", True)],
    "state_sync_edit": [("contact_sync", "app", None, "contact", "add", True)],
    "account_offboarded": [("account_event", None, None, "account_update", "ACCOUNT_OFFBOARDED", True)],
    "account_reconnected": [("account_event", None, None, "account_update", "ACCOUNT_RECONNECTED", True)],
    "account_disabled": [("account_event", None, None, "account_update", "DISABLED_UPDATE", True)],
    "template_approved": [("template_event", None, None, "message_template_status_update", "APPROVED", True)],
    "template_pending_deletion": [("template_event", None, None, "message_template_status_update",
                                   "PENDING_DELETION", True)],
    "template_components": [("template_event", None, None, "message_template_components_update", None, True)],
    "phone_quality_upgrade": [("account_event", None, None, "phone_number_quality_update", "THROUGHPUT_UPGRADE",
                               True)],
    "account_review": [("account_event", None, None, "account_review_update", "APPROVED", True)],
    "user_preferences_resume": [("preference", None, None, "marketing_messages", "resume", True)],
    "text_username_only": [("message", "api", "inbound", "text", None, True)],
    "calls_unknown_field": [],
    "echo_image": [("message", "app", "outbound", "image", None, True)],
    "unknown_field": [],
    "unicode_escaped": [("message", "api", "inbound", "text", None, True)],
    "multi_entry": [("message", "api", "inbound", "text", None, True),
                    ("status", "api", "outbound", None, "delivered", True),
                    ("template_event", None, None, "message_template_status_update", "APPROVED", True),
                    ("message", "api", "inbound", "image", None, True)],
}


def _rows(archive: Archive, body: bytes) -> list[dict]:  # type: ignore[type-arg]
    return build_events(archive.keyring, IdentityBook(archive.engine), body, None, NOW).rows


@pytest.mark.parametrize("name", sorted(CASES))
def test_typed_events(archive: Archive, webhook_body: Callable[[str], bytes], name: str) -> None:
    rows = _rows(archive, webhook_body(name))
    typed = [(r["kind"], r["origin"], r["direction"], r["type"], r["status"], r["modelled"])
             for r in rows if r["kind"] not in ("change", "envelope", "identity")]
    assert typed == CASES[name]
    changes = [r for r in rows if r["kind"] == "change"]
    assert len(changes) == sum(len(e["changes"]) for e in json.loads(webhook_body(name))["entry"])
    assert all(c["modelled"] for c in changes) == (bool(CASES[name]) and all(t[5] for t in CASES[name]))
    assert len({(r["stream"], r["natural_key"]) for r in rows}) == len(rows)


def test_history_is_never_live_capture_but_is_the_same_message(
    archive: Archive, webhook_body: Callable[[str], bytes]
) -> None:
    rows = _rows(archive, webhook_body("history_chunk"))
    msgs = [r for r in rows if r["kind"] == "message"]
    assert {r["origin"] for r in msgs} == {"history"}
    # keyed like live messages: a message seen live (echo) and again in the import is one record
    assert all(r["natural_key"] == f"message:{r['wamid']}" for r in msgs)
    # provenance: which phase and chunk of the import carried it; the import time is received_at
    content = json.loads(archive.keyring.open_record(msgs[0]))
    assert content["history"] == {"phase": 0, "chunk_order": 1, "progress": 55}
    assert all(r["received_at"] == NOW for r in msgs)


def test_people_are_blind_indexed_and_keyed_by_subject(archive: Archive, webhook_body: Callable[[str], bytes]) -> None:
    ks = archive.keyring
    person = ks.blind_index("wa", "16505551234")
    for name in ("echo_text", "state_sync_add", "user_preferences_stop", "history_chunk"):
        rows = _rows(archive, webhook_body(name))
        typed = [r for r in rows if r["kind"] not in ("change", "envelope", "history_chunk")]
        assert typed
        subjects = {r["conversation"] for r in typed}
        assert len(subjects) == 1 and None not in subjects, name
        for r in typed:
            assert r["subject_key_id"] == "subj:" + r["conversation"], name
            if r["kind"] != "identity":  # identity records name each identifier (phone and BSUID)
                assert person in (r["sender"], r["recipient"]), name
        assert ks.blind_index("wa", "+1 650-555-1234") == person  # phone formatting does not matter
        assert b"16505551234" not in b"".join(str(v).encode() for r in rows for k, v in r.items() if k != "content")


def test_business_level_events_use_the_business_key(archive: Archive, webhook_body: Callable[[str], bytes]) -> None:
    rows = _rows(archive, webhook_body("template_rejected"))
    assert {r["stream"] for r in rows} == {"waba-102290129340398"}
    assert {r["subject_key_id"] for r in rows} == {"biz:waba-102290129340398"}
