"""One contract for the S3 code path, run on moto (AWS's request rules) and SeaweedFS (real locks).

moto cannot show WORM behaviour (it lets COMPLIANCE retention be shortened): that lives in
test_worm.py on SeaweedFS only. What moto does check is AWS's request rules, e.g. that an
Object Lock upload carries a checksum-algorithm header.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from archiver.errors import AccessDeniedError, ObjectExistsError, ObjectNotFoundError
from archiver.objectstore import DirectoryObjectStore, S3ObjectStore
from strongroom.embedded import EmbeddedSeaweedFS


@pytest.fixture(params=["moto", "seaweedfs"])
def store(request: pytest.FixtureRequest) -> Iterator[S3ObjectStore]:
    bucket = f"c-{uuid.uuid4().hex[:16]}"
    if request.param == "moto":
        with mock_aws():
            s = S3ObjectStore(bucket, client=boto3.client("s3", region_name="us-east-1"))
            s.ensure_bucket(default_retention_days=1)
            yield s
        return
    sw: EmbeddedSeaweedFS = request.getfixturevalue("seaweed")
    s = S3ObjectStore(bucket, sw.endpoint, sw.access_key, sw.secret_key)
    s.ensure_bucket(default_retention_days=1)
    yield s


def _until() -> datetime:
    return (datetime.now(UTC) + timedelta(minutes=5)).replace(microsecond=0)


def test_bucket_is_created_with_a_compliance_default(store: S3ObjectStore) -> None:
    store.check_compliance_lock()
    store.ensure_bucket(default_retention_days=1)  # idempotent


def test_put_locked_is_conditional_checksummed_and_locked(store: S3ObjectStore) -> None:
    put = store.put_locked("records/stream=1/date=2026-11-25/seg-0-0.parquet", b"segment bytes", _until())
    assert put.sha256 == hashlib.sha256(b"segment bytes").hexdigest()
    with pytest.raises(ObjectExistsError):
        store.put_locked(put.key, b"other bytes", _until())
    assert store.get(put.key) == b"segment bytes"
    assert store.get(put.key, put.version_id) == b"segment bytes"
    ret = store.retention(put.key, put.version_id)
    assert ret.mode == "COMPLIANCE" and ret.retain_until is not None and ret.retain_until >= _until() - timedelta(
        minutes=1)


def test_listing_and_versions(store: S3ObjectStore) -> None:
    for key in ("checkpoints/stream=1/000000000001.json", "checkpoints/stream=1/000000000000.json",
                "checkpoints/stream=2/000000000000.json"):
        store.put_locked(key, key.encode(), _until())
    assert list(store.list_keys("checkpoints/stream=1/")) == [
        "checkpoints/stream=1/000000000000.json", "checkpoints/stream=1/000000000001.json"]
    versions = list(store.list_versions("checkpoints/"))
    assert sorted(v.key for v in versions) == sorted(store.list_keys("checkpoints/"))
    assert not any(v.is_delete_marker for v in versions)


def test_missing_objects_raise_not_found(store: S3ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError):
        store.get("records/nothing-here")
    with pytest.raises(ObjectNotFoundError):
        store.retention("records/nothing-here")


def test_directory_copy_is_read_only(tmp_path: Path) -> None:
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "x").write_bytes(b"1")
    d = DirectoryObjectStore(tmp_path)
    assert list(d.list_keys("records/")) == ["records/x"] and d.get("records/x") == b"1"
    with pytest.raises(AccessDeniedError):
        d.put_locked("records/y", b"2", _until())
    with pytest.raises(ObjectNotFoundError):
        d.get("records/y")
