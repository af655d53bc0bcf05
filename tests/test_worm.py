"""Object Lock COMPLIANCE on a real server (SeaweedFS): what R-1/R-2/R-3 promise.

moto lets COMPLIANCE retention be shortened, so none of this runs on moto.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta

import pytest
from botocore.exceptions import ClientError
from fastapi.testclient import TestClient

from archiver.errors import ObjectExistsError, ObjectLockError
from archiver.objectstore import S3ObjectStore
from strongroom.app import create_app
from strongroom.embedded import EmbeddedSeaweedFS
from strongroom.runtime import Archive, open_archive
from strongroom.settings import Settings
from tests.conftest import sign

pytestmark = pytest.mark.worm


def _sealed(archive: Archive, webhook_body: Callable[[str], bytes]) -> tuple[str, str]:
    body = webhook_body("text_bsuid")
    TestClient(create_app(archive)).post(
        "/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": sign(body)})
    archive.process_pending()
    key = next(iter(archive.store.list_keys("records/")))
    versions = [v for v in archive.store.list_versions(key) if v.key == key]
    assert len(versions) == 1
    return key, str(versions[0].version_id)


def _refused(call: Callable[[], object]) -> str:
    with pytest.raises(ClientError) as exc:
        call()
    return str(exc.value.response["Error"]["Code"])


def test_sealed_segment_cannot_be_deleted_overwritten_or_unlocked(
    archive: Archive, webhook_body: Callable[[str], bytes]
) -> None:
    key, vid = _sealed(archive, webhook_body)
    s3, bucket = archive.store.s3, archive.store.bucket
    original = archive.store.get(key, vid)
    ret = archive.store.retention(key, vid)
    assert ret.mode == "COMPLIANCE"

    # delete of the version, by the same (admin) principal, with and without bypass
    assert _refused(lambda: s3.delete_object(Bucket=bucket, Key=key, VersionId=vid)) == "AccessDenied"
    assert _refused(lambda: s3.delete_object(Bucket=bucket, Key=key, VersionId=vid,
                                             BypassGovernanceRetention=True)) == "AccessDenied"
    # shortening retention, and switching to GOVERNANCE with bypass
    earlier = ret.retain_until - timedelta(hours=1)
    assert _refused(lambda: s3.put_object_retention(
        Bucket=bucket, Key=key, VersionId=vid,
        Retention={"Mode": "COMPLIANCE", "RetainUntilDate": earlier})) == "AccessDenied"
    assert _refused(lambda: s3.put_object_retention(
        Bucket=bucket, Key=key, VersionId=vid, BypassGovernanceRetention=True,
        Retention={"Mode": "GOVERNANCE", "RetainUntilDate": ret.retain_until})) == "AccessDenied"
    # extending is allowed
    s3.put_object_retention(Bucket=bucket, Key=key, VersionId=vid,
                            Retention={"Mode": "COMPLIANCE", "RetainUntilDate": ret.retain_until + timedelta(days=1)})
    assert archive.store.retention(key, vid).retain_until == ret.retain_until + timedelta(days=1)

    # overwrite: our conditional write is refused outright ...
    with pytest.raises(ObjectExistsError):
        archive.store.put_locked(key, b"forged", ret.retain_until)
    # ... and an unconditional PUT only stacks a new version on top: the locked original is
    # intact, and verify reports the attempt naming the object.
    s3.put_object(Bucket=bucket, Key=key, Body=b"forged")
    assert archive.store.get(key, vid) == original
    report = archive.verifier().verify()
    assert not report.ok
    assert any(f.step == 5 and f.item == key and "versions" in f.message for f in report.failures)
    # a plain DELETE only adds a delete marker; the original version stays retrievable
    s3.delete_object(Bucket=bucket, Key=key)
    assert archive.store.get(key, vid) == original
    assert any(f.step == 5 and "delete marker" in f.message for f in archive.verifier().verify().failures)


def test_regulated_mode_refuses_a_bucket_without_compliance_lock(
    seaweed: EmbeddedSeaweedFS, make_settings: Callable[..., Settings]
) -> None:
    plain = S3ObjectStore("plain-" + make_settings().s3_bucket, seaweed.endpoint, seaweed.access_key,
                          seaweed.secret_key)
    plain.s3.create_bucket(Bucket=plain.bucket)  # no Object Lock
    with pytest.raises(ObjectLockError, match="COMPLIANCE default retention"):
        open_archive(make_settings(mode="regulated", s3_bucket=plain.bucket))

    governance = S3ObjectStore("gov-" + make_settings().s3_bucket, seaweed.endpoint, seaweed.access_key,
                               seaweed.secret_key)
    governance.s3.create_bucket(Bucket=governance.bucket, ObjectLockEnabledForBucket=True)
    governance.s3.put_object_lock_configuration(Bucket=governance.bucket, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}})
    with pytest.raises(ObjectLockError, match="default retention mode 'GOVERNANCE'"):
        open_archive(make_settings(mode="regulated", s3_bucket=governance.bucket))


def test_regulated_mode_starts_on_a_compliance_bucket(make_settings: Callable[..., Settings]) -> None:
    open_archive(make_settings()).close()  # standard mode creates the bucket with a COMPLIANCE default
    open_archive(make_settings(mode="regulated")).close()


def test_regulated_refusal_message_reaches_the_operator(
    seaweed: EmbeddedSeaweedFS, make_settings: Callable[..., Settings]
) -> None:
    import subprocess
    import sys

    from tests.conftest import subprocess_env

    settings = make_settings(mode="regulated", s3_bucket="absent-" + make_settings().s3_bucket)
    env = subprocess_env(settings) | {"STRONGROOM_MODE": "regulated"}
    proc = subprocess.run([sys.executable, "-m", "strongroom", "seal"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 7  # a configuration error (docs/errors.md)
    assert "Object Lock" in proc.stderr and "COMPLIANCE" in proc.stderr


def _no_answer_without_a_client_certificate(port: int) -> list[str]:
    """What a process on this machine gets from one of SeaweedFS's internal ports: plain HTTP and
    TLS without a client certificate. Returns how each attempt failed (it must fail)."""
    import socket
    import ssl

    import httpx

    outcomes = []
    for method, path in (("DELETE", "/buckets/x/records/y"), ("POST", "/col/delete?collection=x"), ("GET", "/")):
        try:
            r = httpx.request(method, f"http://127.0.0.1:{port}{path}", timeout=5)
        except httpx.HTTPError as e:
            outcomes.append(f"plain {method}: {type(e).__name__}")
        else:
            assert r.status_code == 400 and "HTTPS" in r.text, (port, method, r.status_code, r.text[:200])
            outcomes.append(f"plain {method}: refused ({r.status_code})")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # the attacker trusts anything
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw) as tls:
                tls.sendall(b"DELETE /buckets/x/records/y HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                answer = tls.recv(4096)  # TLS 1.3 reports a missing client certificate after the handshake
                assert not answer.startswith(b"HTTP/1.1 2"), (port, answer[:200])
                outcomes.append("tls without a certificate: no answer")
        except (ssl.SSLError, ConnectionError, TimeoutError) as e:
            outcomes.append(f"tls without a certificate: {type(e).__name__}")
    return outcomes


def test_only_the_s3_gateway_answers_the_filer_master_and_volume_need_a_certificate(
    archive: Archive, seaweed: EmbeddedSeaweedFS, webhook_body: Callable[[str], bytes]
) -> None:
    """The review deleted a COMPLIANCE-locked segment through the filer's HTTP API. Every internal
    port (HTTP and gRPC of master, volume and filer, and the S3 gateway's gRPC) now refuses a
    caller without the per-start client certificate, and the segment is still there."""
    key, vid = _sealed(archive, webhook_body)
    original = archive.store.get(key, vid)
    ports = [p for name in ("master", "volume", "filer") for p in (seaweed.ports[name], seaweed.ports[name] + 10000)]
    ports.append(seaweed.s3_port + 10000)
    for port in ports:
        outcomes = _no_answer_without_a_client_certificate(port)
        assert len(outcomes) == 4, (port, outcomes)
    assert archive.store.get(key, vid) == original and archive.store.retention(key, vid).mode == "COMPLIANCE"
    security = seaweed.dir / "security.toml"
    assert security.stat().st_mode & 0o777 == 0o600 and (seaweed.dir / "tls" / "node.key").stat().st_mode & 0o777 == 0o600
    assert not list((seaweed.dir / "tls").glob("ca*.key"))  # the CA's key is not kept: no one can issue another


def test_regulated_mode_refuses_to_act_until_a_schedule_is_stored(make_settings: Callable[..., Settings]) -> None:
    """Issue 16, item 3: on the built-in default nothing irreversible runs in regulated mode."""
    import subprocess
    import sys
    from datetime import UTC, datetime

    from archiver.errors import ConfigurationError
    from strongroom import payloads as p
    from tests.conftest import ingest, subprocess_env

    open_archive(make_settings()).close()  # standard mode creates the bucket with a COMPLIANCE default
    settings = make_settings(mode="regulated")
    a = open_archive(settings)
    try:
        with pytest.raises(ConfigurationError, match="strongroom retention set"):
            a.erasure()
        with pytest.raises(ConfigurationError, match="a retention run is refused"):
            a.retention_run()
        assert a.retention_run(acting=False).overdue(datetime.now(UTC)) == []  # the report still answers
        env = subprocess_env(settings) | {"STRONGROOM_MODE": "regulated"}
        worker = subprocess.run([sys.executable, "-m", "strongroom", "worker"], env=env, capture_output=True,
                                text=True, timeout=120)
        assert worker.returncode == 7 and "strongroom retention set" in worker.stderr, worker.stderr

        a.schedules.store({"default_tags": ["FINRA"]}, "compliance:carol", datetime.now(UTC))
        ingest(a, p.inbound(p.text("wamid.r1", "16505550991", int(datetime.now(UTC).timestamp()) - 60, "keep")))
        decision = a.erasure().request("dpo:dan", phone="16505550991")
        assert decision.outcome == "refused" and decision.basis[0]["article"] == "17(3)(b)"
        assert "FINRA" in json.dumps(decision.basis)
    finally:
        a.close()
