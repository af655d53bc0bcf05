"""Object storage: a small interface whose docstrings are the contract, and its adapters.

`S3ObjectStore` is the one S3 code path (boto3) for AWS S3 Object Lock, SeaweedFS, MinIO and
Ceph. `DirectoryObjectStore` reads a local copy of the archive (for an auditor's offline copy
and for tamper tests); it is read-only. No botocore type escapes this module: `ClientError`
codes are mapped onto `archiver.errors`.
"""

from __future__ import annotations

import base64
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from archiver.errors import (
    AccessDeniedError,
    ObjectExistsError,
    ObjectLockError,
    ObjectNotFoundError,
    ObjectStoreError,
)


@dataclass(frozen=True, slots=True)
class PutResult:
    key: str
    version_id: str | None
    sha256: str


@dataclass(frozen=True, slots=True)
class ObjectVersion:
    key: str
    version_id: str | None
    size: int
    is_delete_marker: bool
    last_modified: datetime | None


@dataclass(frozen=True, slots=True)
class Retention:
    mode: str | None
    retain_until: datetime | None
    legal_hold: bool


class ObjectStore(ABC):
    """Write-once object storage."""

    @abstractmethod
    def put_locked(self, key: str, data: bytes, retain_until: datetime) -> PutResult:
        """Create `key` with Object Lock COMPLIANCE until `retain_until`.

        The write is conditional (``If-None-Match: *``) and carries a SHA-256 checksum the
        server checks.

        Raises:
            ObjectExistsError: an object is already at `key` (the caller decides whether it is
                the same bytes: same bytes = already done; different bytes = conflict).
            ObjectLockError: the store did not apply the lock.
        """

    @abstractmethod
    def get(self, key: str, version_id: str | None = None) -> bytes:
        """Return the bytes of `key` (a given version, or the latest).

        Raises:
            ObjectNotFoundError: no such key or version.
        """

    @abstractmethod
    def list_keys(self, prefix: str) -> Iterator[str]:
        """Yield every current key under `prefix`, in lexicographic order."""

    @abstractmethod
    def list_versions(self, prefix: str) -> Iterator[ObjectVersion]:
        """Yield every version and delete marker under `prefix`, oldest first per key."""

    @abstractmethod
    def retention(self, key: str, version_id: str | None = None) -> Retention:
        """Object Lock mode, retain-until date and legal hold of a version."""

    def extend_retention(self, key: str, version_id: str | None, retain_until: datetime) -> None:
        """Move a COMPLIANCE retain-until later (the store refuses earlier: AccessDeniedError)."""
        raise AccessDeniedError(f"{type(self).__name__} cannot change retention")

    def set_legal_hold(self, key: str, version_id: str | None, on: bool) -> None:
        """Place or lift the S3 legal hold of a version."""
        raise AccessDeniedError(f"{type(self).__name__} cannot place legal holds")

    def delete_version(self, key: str, version_id: str | None) -> None:
        """Delete one version for good (refused while it is locked or held: AccessDeniedError)."""
        raise AccessDeniedError(f"{type(self).__name__} cannot delete")


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


class S3ObjectStore(ObjectStore):
    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str = "us-east-1",
        client: Any | None = None,
    ) -> None:
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self._access_key = access_key
        self._secret_key = secret_key
        self.s3: Any = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 5, "mode": "standard"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    @property
    def credentials(self) -> tuple[str | None, str | None]:
        return self._access_key, self._secret_key

    # -- bucket -----------------------------------------------------------------------------

    def ensure_bucket(self, default_retention_days: int) -> None:
        """Create the bucket with Object Lock and a COMPLIANCE default retention if missing."""
        try:
            self.s3.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            if _code(e) not in ("404", "NoSuchBucket", "NotFound"):
                raise _translate(e, self.bucket) from e
            try:
                self.s3.create_bucket(Bucket=self.bucket, ObjectLockEnabledForBucket=True)
            except ClientError as e2:
                if _code(e2) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise _translate(e2, self.bucket) from e2
            self.s3.put_object_lock_configuration(
                Bucket=self.bucket,
                ObjectLockConfiguration={
                    "ObjectLockEnabled": "Enabled",
                    "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": default_retention_days}},
                },
            )

    def check_compliance_lock(self) -> None:
        """Raise `ObjectLockError` unless the bucket has Object Lock with a COMPLIANCE default."""
        try:
            cfg = self.s3.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as e:
            raise ObjectLockError(
                f"bucket {self.bucket!r} has no Object Lock configuration ({_code(e)}); "
                "create it with Object Lock enabled and a COMPLIANCE default retention"
            ) from e
        lock = cfg.get("ObjectLockConfiguration", {})
        mode = lock.get("Rule", {}).get("DefaultRetention", {}).get("Mode")
        if lock.get("ObjectLockEnabled") != "Enabled" or mode != "COMPLIANCE":
            raise ObjectLockError(
                f"bucket {self.bucket!r} Object Lock is {lock.get('ObjectLockEnabled')!r} with "
                f"default retention mode {mode!r}; regulated mode needs Enabled + COMPLIANCE "
                "(aws s3api put-object-lock-configuration --object-lock-configuration "
                "'ObjectLockEnabled=Enabled,Rule={DefaultRetention={Mode=COMPLIANCE,Days=N}}')"
            )

    # -- objects ----------------------------------------------------------------------------

    def put_locked(self, key: str, data: bytes, retain_until: datetime) -> PutResult:
        checksum = sha256_b64(data)
        try:
            resp = self.s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                IfNoneMatch="*",
                # AWS refuses an Object Lock upload without x-amz-sdk-checksum-algorithm (or
                # Content-MD5); the algorithm header plus our own value satisfies it and lets the
                # server check the bytes.
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=checksum,
                ObjectLockMode="COMPLIANCE",
                ObjectLockRetainUntilDate=retain_until,
            )
        except ClientError as e:
            if _code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise ObjectExistsError(key) from e
            raise _translate(e, key) from e
        if resp.get("ChecksumSHA256") not in (None, checksum):
            raise ObjectStoreError(f"store acknowledged {key} with a different checksum")
        version_id = resp.get("VersionId")
        ret = self.retention(key, version_id)
        if ret.mode != "COMPLIANCE" or ret.retain_until is None or ret.retain_until < retain_until.replace(microsecond=0):
            raise ObjectLockError(
                f"{key}: store reports lock mode {ret.mode!r} until {ret.retain_until}, "
                f"requested COMPLIANCE until {retain_until}"
            )
        return PutResult(key, version_id, hashlib.sha256(data).hexdigest())

    def get(self, key: str, version_id: str | None = None) -> bytes:
        kwargs = {"VersionId": version_id} if version_id else {}
        try:
            data: bytes = self.s3.get_object(Bucket=self.bucket, Key=key, **kwargs)["Body"].read()
            return data
        except ClientError as e:
            raise _translate(e, key) from e

    def list_keys(self, prefix: str) -> Iterator[str]:
        paginator = self.s3.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    yield obj["Key"]
        except ClientError as e:
            raise _translate(e, prefix) from e

    def list_versions(self, prefix: str) -> Iterator[ObjectVersion]:
        paginator = self.s3.get_paginator("list_object_versions")
        found: list[ObjectVersion] = []
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for v in page.get("Versions", []):
                    found.append(ObjectVersion(v["Key"], v.get("VersionId"), v["Size"], False, v.get("LastModified")))
                for m in page.get("DeleteMarkers", []):
                    found.append(ObjectVersion(m["Key"], m.get("VersionId"), 0, True, m.get("LastModified")))
        except ClientError as e:
            raise _translate(e, prefix) from e
        found.sort(key=lambda v: (v.key, v.last_modified or datetime.min, v.version_id or ""))
        yield from found

    def retention(self, key: str, version_id: str | None = None) -> Retention:
        kwargs = {"VersionId": version_id} if version_id else {}
        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=key, **kwargs)
        except ClientError as e:
            raise _translate(e, key) from e
        return Retention(
            head.get("ObjectLockMode"),
            head.get("ObjectLockRetainUntilDate"),
            head.get("ObjectLockLegalHoldStatus") == "ON",
        )


    def extend_retention(self, key: str, version_id: str | None, retain_until: datetime) -> None:
        kwargs = {"VersionId": version_id} if version_id else {}
        try:
            self.s3.put_object_retention(Bucket=self.bucket, Key=key, ChecksumAlgorithm="SHA256",
                                         Retention={"Mode": "COMPLIANCE", "RetainUntilDate": retain_until}, **kwargs)
        except ClientError as e:
            raise _translate(e, key) from e

    def set_legal_hold(self, key: str, version_id: str | None, on: bool) -> None:
        kwargs = {"VersionId": version_id} if version_id else {}
        try:
            self.s3.put_object_legal_hold(Bucket=self.bucket, Key=key, ChecksumAlgorithm="SHA256",
                                          LegalHold={"Status": "ON" if on else "OFF"}, **kwargs)
        except ClientError as e:
            raise _translate(e, key) from e

    def delete_version(self, key: str, version_id: str | None) -> None:
        kwargs = {"VersionId": version_id} if version_id else {}
        try:
            self.s3.delete_object(Bucket=self.bucket, Key=key, **kwargs)
        except ClientError as e:
            raise _translate(e, key) from e


class DirectoryObjectStore(ObjectStore):
    """A read-only local copy of the archive's objects (same key layout under `root`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put_locked(self, key: str, data: bytes, retain_until: datetime) -> PutResult:
        raise AccessDeniedError("a directory copy is read-only")

    def get(self, key: str, version_id: str | None = None) -> bytes:
        path = self.root / key
        if not path.is_file():
            raise ObjectNotFoundError(key)
        return path.read_bytes()

    def list_keys(self, prefix: str) -> Iterator[str]:
        keys = (str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file())
        yield from sorted(k for k in keys if k.startswith(prefix))

    def list_versions(self, prefix: str) -> Iterator[ObjectVersion]:
        for key in self.list_keys(prefix):
            yield ObjectVersion(key, None, (self.root / key).stat().st_size, False, None)

    def retention(self, key: str, version_id: str | None = None) -> Retention:
        return Retention(None, None, False)


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _translate(e: ClientError, key: str) -> ObjectStoreError:
    code = _code(e)
    if code in ("NoSuchKey", "404", "NoSuchVersion", "NotFound"):
        return ObjectNotFoundError(key)
    if code in ("AccessDenied", "403"):
        return AccessDeniedError(f"access denied for {key}: {e}")
    return ObjectStoreError(f"{code or 'error'} for {key}: {e}")
