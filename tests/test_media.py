"""Attachments against a real HTTP Graph stand-in and SeaweedFS: stored WORM and linked, or a gap."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from archiver.db import events, media
from archiver.media import GraphClient, MediaFetcher, MediaPolicy, open_media
from archiver.objectstore import S3ObjectStore
from archiver.sqlutil import Row
from strongroom import payloads as p
from strongroom.runtime import Archive, open_archive
from strongroom.settings import Settings
from tests.conftest import ingest, record_json, sign
from tests.graph_standin import GraphStandIn

NOW = int(time.time())


@pytest.fixture
def media_archive(make_settings: Callable[..., Settings], graph: GraphStandIn) -> Iterator[Archive]:
    a = open_archive(make_settings(graph_base_url=graph.base_url, graph_token=graph.token,
                                   media_retry_base_seconds=0, media_max_attempts=3, media_concurrency=2))
    yield a
    a.close()


def _records(archive: Archive, kind: str) -> dict[str, Row]:
    with archive.engine.connect() as conn:
        return {r.wamid: r for r in conn.execute(sa.select(events).where(events.c.kind == kind))}


def test_media_is_fetched_checked_encrypted_locked_and_linked(media_archive: Archive, graph: GraphStandIn) -> None:
    photo = b"\xff\xd8\xff JPEG CANARY-PHOTO " + os.urandom(4000)
    m = graph.add("media-1", photo)
    ingest(media_archive, p.inbound(p.image("wamid.img1", "16505551234", NOW, "media-1", m.sha256)))

    rec = _records(media_archive, "media")["wamid.img1"]
    link = record_json(media_archive, rec)
    assert (link["media_id"], link["size"], link["source"]) == ("media-1", len(photo), "graph")
    assert rec.segment_id is not None  # sealed like any record
    assert rec.event_time is not None and int(rec.event_time.timestamp()) == NOW  # filed by message time
    assert link["object_key"].startswith(f"media/stream={p.PNID}/") and link["object_key"].endswith(".bin")

    obj = media_archive.store.get(link["object_key"])
    assert b"CANARY-PHOTO" not in obj  # ciphertext only
    assert open_media(media_archive.keyring, rec.stream, "media-1", rec.subject_key_id, obj) == photo
    lock = media_archive.store.retention(link["object_key"])
    assert lock.mode == "COMPLIANCE" and lock.retain_until > datetime.now(UTC)
    # the object is bound to its media id: it cannot be passed off as another attachment
    with pytest.raises(Exception):  # noqa: B017
        open_media(media_archive.keyring, rec.stream, "media-2", rec.subject_key_id, obj)

    report = media_archive.verifier().verify(expected_sizes=media_archive.expected_sizes())
    assert report.ok, [str(f) for f in report.failures]


def test_a_url_in_the_webhook_is_used_and_an_expired_one_falls_back_to_the_graph(
    media_archive: Archive, graph: GraphStandIn
) -> None:
    fresh, stale = graph.add("m-url", b"fresh-bytes" * 100), graph.add("m-stale", b"stale-bytes" * 100)
    ingest(media_archive, p.inbound(
        p.image("wamid.u1", "16505551234", NOW, "m-url", fresh.sha256, url=graph.signed_url("m-url")),
        p.image("wamid.u2", "16505551234", NOW, "m-stale", stale.sha256, url=graph.signed_url("m-stale", ttl=-1))))
    recs = _records(media_archive, "media")
    assert record_json(media_archive, recs["wamid.u1"])["source"] == "webhook_url"
    assert graph.calls["info:m-url"] == 0
    assert record_json(media_archive, recs["wamid.u2"])["source"] == "graph"
    assert graph.calls["info:m-stale"] == 1


def test_transient_failures_are_retried(media_archive: Archive, graph: GraphStandIn) -> None:
    m = graph.add("m-flaky", b"flaky" * 50, fail_first=2)
    ingest(media_archive, p.inbound(p.image("wamid.f1", "16505551234", NOW, "m-flaky", m.sha256)))
    assert "wamid.f1" in _records(media_archive, "media")
    assert graph.calls["download:m-flaky"] == 3
    assert "wamid.f1" not in _records(media_archive, "gap")


@pytest.mark.parametrize("mode", ["always_fail", "corrupt", "unknown_id"])
def test_media_that_cannot_be_fetched_is_a_gap_record(media_archive: Archive, graph: GraphStandIn, mode: str) -> None:
    m = graph.add("m-bad", b"bad-bytes" * 30, always_fail=mode == "always_fail", corrupt=mode == "corrupt")
    if mode == "unknown_id":
        del graph.media["m-bad"]  # Meta forgot the id (media ids expire after 7 days)
    ingest(media_archive, p.inbound(p.image("wamid.b1", "16505551234", NOW, "m-bad", m.sha256)))
    gaps = _records(media_archive, "gap")
    assert "wamid.b1" not in _records(media_archive, "media")
    gap = record_json(media_archive, gaps["wamid.b1"])
    assert (gap["gap"], gap["media_id"], gap["attempts"]) == ("media_unavailable", "m-bad", 3)
    assert gaps["wamid.b1"].type == "media_unavailable" and gaps["wamid.b1"].segment_id is not None
    with media_archive.engine.connect() as conn:
        assert conn.execute(sa.select(media.c.state)).scalar_one() == "gap"
    assert not list(media_archive.store.list_keys("media/"))


def test_history_media_is_filed_by_message_time(media_archive: Archive, graph: GraphStandIn) -> None:
    m = graph.add("24230790383178626", b"history-photo" * 40, sha_hex=True)
    old = NOW - 5 * 86400
    follow_up = p.body(p.envelope(p.change("history", {"messages": [
        p.image("wamid.hm1", "16505551234", old, "24230790383178626", m.sha256, caption="Black Prince")]})))
    ingest(media_archive, follow_up)
    rec = _records(media_archive, "media")["wamid.hm1"]
    assert int(rec.event_time.timestamp()) == old


def test_without_a_token_media_waits_and_expired_ids_become_gaps(archive: Archive) -> None:
    expired = NOW - 8 * 86400
    ingest(archive, p.inbound(p.image("wamid.n1", "16505551234", NOW, "m-wait", "x"),
                               p.image("wamid.n2", "16505551234", expired, "m-old", "y")))
    with archive.engine.connect() as conn:
        states = dict(conn.execute(sa.select(media.c.media_id, media.c.state)).all())
    assert states == {"m-wait": "pending", "m-old": "gap"}
    assert "no Graph API token" in record_json(archive, _records(archive, "gap")["wamid.n2"])["last_error"]


def test_our_own_storage_failing_never_spends_attempts(media_archive: Archive, graph: GraphStandIn) -> None:
    """A store outage (here: a bucket that does not exist on the real SeaweedFS) is our problem,
    not Meta's: the job waits and retries, it does not count towards becoming a gap."""
    m = graph.add("m-later", b"later" * 100)
    normal = media_archive.store
    broken = S3ObjectStore(f"missing-{normal.bucket}", normal.endpoint_url, *normal.credentials, normal.region)
    body = p.inbound(p.image("wamid.s1", "16505551234", NOW, "m-later", m.sha256))
    media_archive.inbox.receive(body, sign(body))
    while media_archive.normalizer().run_once():
        pass
    fetcher = MediaFetcher(media_archive.engine, broken, media_archive.keyring,
                           GraphClient(graph.base_url, graph.token), media_archive.retain_until,
                           MediaPolicy(max_attempts=1, retry_base=timedelta(0)))
    assert fetcher.run_once() == 1 and fetcher.run_once() == 0  # rescheduled, not retried in a tight loop
    fetcher.close()
    with media_archive.engine.connect() as conn:
        job = conn.execute(sa.select(media)).one()
    assert (job.state, job.attempts) == ("pending", 0) and job.last_error
    assert "wamid.s1" not in _records(media_archive, "gap")
