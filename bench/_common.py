"""Shared set-up for the benchmarks: a throw-away archive and realistic signed webhook bodies."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from strongroom.embedded import free_port  # noqa: E402
from strongroom.runtime import Archive, configure_logging, open_archive  # noqa: E402
from strongroom.settings import Settings  # noqa: E402

APP_SECRET = "bench-secret"
WORDS = ("please confirm the trade at market open", "bitte rufen Sie mich zurück", "merci pour votre message",
         "¿puede enviar el extracto?", "the order for 300 shares is filled", "ok 👍", "send me the statement")


def body(i: int, phone_number_id: str = "106540352242922") -> bytes:
    """One inbound text message, Meta-shaped (non-ASCII escaped like Meta sends it)."""
    rng = random.Random(i)
    wa_id = f"1650555{rng.randint(0, 9999):04d}"
    doc = {"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{"value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id},
        "contacts": [{"profile": {"name": f"Customer {i % 997}"}, "wa_id": wa_id}],
        "messages": [{"from": wa_id, "id": f"wamid.bench{i:012d}", "timestamp": str(1739230955 + i),
                      "type": "text", "text": {"body": rng.choice(WORDS) + f" #{i}"}}]},
        "field": "messages"}]}]}
    return json.dumps(doc, separators=(",", ":")).encode()


def signature(data: bytes) -> str:
    return "sha256=" + hmac.new(APP_SECRET.encode(), data, hashlib.sha256).hexdigest()


@contextmanager
def temp_archive(database_url: str | None = None, **overrides: object) -> Iterator[Archive]:
    with tempfile.TemporaryDirectory(prefix="strongroom-bench-") as tmp:
        configure_logging("WARNING")
        settings = Settings(data_dir=Path(tmp), database_url=database_url, app_secret=APP_SECRET,
                            verify_token="bench", retention_days=1, embedded_s3_port=free_port(), **overrides)
        archive = open_archive(settings)
        try:
            yield archive
        finally:
            archive.close()


def child_env(archive: Archive) -> dict[str, str]:
    """Environment for a child process working on the same archive (its store already running)."""
    s = archive.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    ak, sk = archive.store.credentials
    env.update({"STRONGROOM_DATA_DIR": str(s.data_dir), "STRONGROOM_DATABASE_URL": s.sql_url(),
                "STRONGROOM_S3_ENDPOINT": str(archive.store.endpoint_url), "STRONGROOM_S3_BUCKET": s.s3_bucket,
                "STRONGROOM_S3_ACCESS_KEY": ak or "", "STRONGROOM_S3_SECRET_KEY": sk or "",
                "STRONGROOM_APP_SECRET": APP_SECRET, "STRONGROOM_VERIFY_TOKEN": "bench",
                "STRONGROOM_RETENTION_DAYS": str(s.retention_days), "STRONGROOM_LOG_LEVEL": "WARNING",
                "PYTHONPATH": str(REPO)})
    return env


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def env_database_url() -> str | None:
    return os.environ.get("BENCH_DATABASE_URL")


# Work that makes this process large (generating a corpus) runs in a child: a process started from
# a large one inherits its peak RSS in the kernel's accounting (exec records the old address space's
# high-water mark), so a measured child's peak RSS is only its own if the launcher stays small.
_COMMIT_HISTORY = """
import sys
from strongroom.runtime import open_archive
from strongroom.settings import Settings
from strongroom.payloads import busy_history
from _common import signature
a = open_archive(Settings())
bodies = busy_history(int(sys.argv[1]), int(sys.argv[2]))
for i in range(0, len(bodies), 25):
    a.inbox.commit([a.inbox.prepare(b, signature(b)) for b in bodies[i:i + 25]])
a.close()
"""
PROCESS_PENDING = "from strongroom.runtime import open_archive; from strongroom.settings import Settings; " \
                  "a = open_archive(Settings()); print(a.process_pending()); a.close()"


def commit_history(env: dict[str, str], messages: int, per_chunk: int) -> None:
    """Receive `busy_history(messages, per_chunk)` into the archive's inbox, from a child process."""
    env = {**env, "PYTHONPATH": env["PYTHONPATH"] + os.pathsep + str(REPO / "bench")}
    subprocess.run([sys.executable, "-c", _COMMIT_HISTORY, str(messages), str(per_chunk)], env=env, cwd=REPO,
                   check=True, stdout=subprocess.DEVNULL)


def signed_in(archive: Archive, name: str, role: str, tenants: list[str] | None = None) -> tuple[Any, dict[str, str], str]:
    """An in-process client of the app with a console session of a new person `name`, their API
    bearer header, and the console's CSRF token: (client, api headers, csrf)."""
    import time

    import pyotp
    from fastapi.testclient import TestClient

    from strongroom.app import create_app

    user = archive.accounts().create_user(name, role, tenants, "bench", approved=True)
    client = TestClient(create_app(archive), base_url="http://127.0.0.1")
    client.get("/console/login")
    r = client.post("/console/login", data={"pre": client.cookies["sr_console_pre"], "name": name,
                                            "password": user["password"],
                                            "otp": pyotp.TOTP(user["totp_secret"]).now()}, follow_redirects=False)
    assert r.status_code == 303, r.text
    token, _ = archive.accounts().login(name, user["password"], pyotp.TOTP(user["totp_secret"]).at(time.time() + 30))
    csrf = client.app.state.console.csrf(client.cookies["sr_console"])
    return client, {"Authorization": f"Bearer {token}"}, csrf


def percentile(xs: list[float], q: float) -> float:
    """The q-th quantile (nearest rank) of `xs`."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]
