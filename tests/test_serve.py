"""`strongroom serve` as `make run` runs it: embedded SeaweedFS + SQLite, worker process, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from strongroom import payloads as p
from strongroom.embedded import free_port
from strongroom.runtime import open_archive
from strongroom.settings import Settings
from tests.conftest import FIXTURES

pytestmark = pytest.mark.slow


def _children(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
    tree, found = {}, set()
    for line in out.split("\n"):
        if line.strip():
            p, pp = map(int, line.split())
            tree.setdefault(pp, []).append(p)
    todo = [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _first_hour(port: int, env: dict[str, str], tmp_path: Path) -> None:
    """The README's "Try it": a demo day, a search, a person signs in, the API answers them."""
    import json

    import pyotp

    def strongroom(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "strongroom", *args], env=env, input=stdin,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done

    assert "11 signed webhooks acknowledged" in strongroom("demo").stdout
    deadline = time.monotonic() + 60
    while json.loads(strongroom("search", "shares OR depots", "--json").stdout)["total"] < 3:
        assert time.monotonic() < deadline, "the demo day was not sealed and indexed"
        time.sleep(1)
    assert json.loads(strongroom("search", "origin:app", "--json").stdout)["total"] == 2  # the echoes
    alice = json.loads(strongroom("users", "add", "alice", "--role", "auditor", "--tenant", p.WABA).stdout)
    signed_in = strongroom("login", "--name", "alice", "--password-stdin",
                           "--otp", pyotp.TOTP(alice["totp_secret"]).now(), stdin=alice["password"] + "\n")
    assert "signed in as alice" in signed_in.stdout
    session = next((tmp_path / "data" / "sessions").iterdir())
    assert session.stat().st_mode & 0o777 == 0o600 and alice["password"] not in session.read_text()
    token = strongroom("token").stdout.strip()
    hits = httpx.get(f"http://127.0.0.1:{port}/api/v1/search", params={"q": "shares"},
                     headers={"Authorization": f"Bearer {token}"}).json()
    assert hits["total"] == 2 and {h["wamid"] for h in hits["items"]} == {"wamid.DEMO.A1", "wamid.DEMO.A3"}
    assert "signed out" in strongroom("logout").stdout
    assert httpx.get(f"http://127.0.0.1:{port}/api/v1/search", params={"q": "shares"},
                     headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_serve_ingests_seals_verifies_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    port, s3_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    env.update(STRONGROOM_DATA_DIR=str(tmp_path / "data"), STRONGROOM_PORT=str(port),
               STRONGROOM_EMBEDDED_S3_PORT=str(s3_port), STRONGROOM_RETENTION_DAYS="1")
    proc = subprocess.Popen([sys.executable, "-m", "strongroom", "serve"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            pytest.fail("serve did not come up")
        secrets = tmp_path / "data" / "secrets"
        assert (secrets / "app_secret").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "data" / "keys" / "kek.key").stat().st_mode & 0o777 == 0o600

        import hashlib
        import hmac

        body = (FIXTURES / "webhooks" / "text_bsuid.json").read_bytes()
        sig = "sha256=" + hmac.new((secrets / "app_secret").read_bytes().strip(), body, hashlib.sha256).hexdigest()
        r = httpx.post(f"http://127.0.0.1:{port}/webhooks/whatsapp", content=body,
                       headers={"X-Hub-Signature-256": sig})
        assert r.status_code == 200
        token = (secrets / "verify_token").read_text().strip()
        hs = httpx.get(f"http://127.0.0.1:{port}/webhooks/whatsapp",
                       params={"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "42"})
        assert hs.text == "42"

        archive = open_archive(Settings(data_dir=tmp_path / "data", embedded_s3_port=s3_port))
        try:
            for _ in range(60):  # the worker process seals within a few seconds
                if archive.expected_sizes().get("1122334455667"):
                    break
                time.sleep(0.5)
            for _ in range(20):  # the worker may be between a segment and its checkpoint: it converges
                report = archive.verifier().verify(expected_sizes=archive.expected_sizes())
                if report.ok:
                    break
                time.sleep(0.5)
            assert report.ok, [str(f) for f in report.failures]
            assert archive.embedded is not None and archive.embedded.proc is None  # attached, not started
        finally:
            archive.close()

        _first_hour(port, env, tmp_path)

        children = _children(proc.pid)
        assert len(children) >= 2  # the worker and SeaweedFS
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(c) for c in children):
            time.sleep(0.5)
        assert not [c for c in children if _alive(c)], "serve left processes running after Ctrl-C"
        output = proc.stdout.read() if proc.stdout else ""
        assert "webhooks/whatsapp" in output and str(secrets / "app_secret") in output
        assert token not in output
    finally:
        if proc.poll() is None:
            proc.kill()


def _listening_ports(pid: int) -> set[int]:
    """The ports a SeaweedFS child was told to bind (each with its +10000 gRPC twin)."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    ports: set[int] = set()
    for a in args:
        for flag in (b"-master.port=", b"-volume.port=", b"-filer.port=", b"-s3.port="):
            if a.startswith(flag):
                ports |= {int(a[len(flag):]), int(a[len(flag):]) + 10000}
    return ports


@pytest.mark.parametrize("target", ["serve", "process group"])
def test_sigterm_stops_the_server_worker_and_seaweedfs_and_frees_every_port(tmp_path: Path, target: str) -> None:
    """What `kill`, systemd and Docker send, to `serve` itself or to `make run`'s process group."""
    from strongroom.embedded import _port_free

    port, s3_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    env.update(STRONGROOM_DATA_DIR=str(tmp_path / "data"), STRONGROOM_PORT=str(port),
               STRONGROOM_EMBEDDED_S3_PORT=str(s3_port), STRONGROOM_RETENTION_DAYS="1")
    proc = subprocess.Popen([sys.executable, "-m", "strongroom", "serve"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "serve exited before serving: " + "".join(lines)
            lines.append(line)
            if "serving on" in line:
                # said only once the port is bound: it answers right away
                assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
            if "stops the service" in line:  # the banner's last line
                break
        else:
            pytest.fail("serve did not say it was serving")
        assert any("serving on" in line for line in lines)
        assert "Back up keys/" in "".join(lines)  # first run: the key files are new
        children = _children(proc.pid)
        weed = [c for c in children if b"weed" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(weed) == 1 and len(children) >= 2  # SeaweedFS and the worker
        ports = {port} | _listening_ports(weed[0])

        # a CLI command on the same data dir: attaches on the same port, says so plainly on another
        cli_env = {**env, "STRONGROOM_LOG_LEVEL": "WARNING"}
        same = subprocess.run([sys.executable, "-m", "strongroom", "hold", "list"], env=cli_env,
                              capture_output=True, text=True, timeout=120)
        assert same.returncode == 0, same.stderr
        other = subprocess.run([sys.executable, "-m", "strongroom", "hold", "list"],
                               env={**cli_env, "STRONGROOM_EMBEDDED_S3_PORT": str(free_port())},
                               capture_output=True, text=True, timeout=120)
        assert other.returncode == 7 and f"STRONGROOM_EMBEDDED_S3_PORT={s3_port}" in other.stderr, other.stderr

        started = time.monotonic()
        if target == "serve":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        while time.monotonic() - started < 20 and any(_alive(c) for c in children):
            time.sleep(0.2)
        assert not [c for c in children if _alive(c)], "serve left processes running after SIGTERM"
        assert time.monotonic() - started < 15, "stopping took longer than a container's grace period"
        busy = [p for p in ports if not _port_free(p)]
        assert not busy, f"ports still bound after the stop: {busy}"
        rest = proc.stdout.read()
        assert "strongroom stopped" in rest
        assert not (tmp_path / "data" / "seaweedfs" / "running.json").exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_ports_are_chosen_outside_the_range_outgoing_connections_take() -> None:
    """CI failed when a long-lived outgoing connection held an embedded server's gRPC port."""
    from strongroom.embedded import _ephemeral_range

    low, high = _ephemeral_range()
    for _ in range(50):
        port = free_port()
        assert not (low <= port <= high) and not (low <= port + 10000 <= high)


def test_an_s3_port_taken_while_starting_is_chosen_again(tmp_path: Path) -> None:
    """The S3 gRPC twin (s3 port + 10000) held by another process: weed exits 255 at once; a port the
    archive chose itself is chosen again and the server starts."""
    import socket

    from strongroom.embedded import EmbeddedSeaweedFS

    sw = EmbeddedSeaweedFS(tmp_path)
    first = sw.s3_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", first + 10000))
        squatter.listen()
        try:
            sw.start()
            assert sw.s3_port != first and sw._answers()
        finally:
            sw.stop()
    assert b"address already in use" in (tmp_path / "seaweedfs" / "weed.log").read_bytes()


def test_a_configured_s3_port_whose_twin_is_taken_is_refused_by_name(tmp_path: Path) -> None:
    import socket

    from archiver.errors import ConfigurationError
    from strongroom.embedded import EmbeddedSeaweedFS

    port = free_port()
    sw = EmbeddedSeaweedFS(tmp_path, s3_port=port)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port + 10000))
        squatter.listen()
        with pytest.raises(ConfigurationError, match=f"port {port} \\(or its gRPC twin {port + 10000}\\)"):
            sw.start()
    sw.stop()


def test_a_relative_data_directory_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default data directory is relative (`.strongroom-data`); weed runs inside it, so the
    paths it is given (TLS files in security.toml) must not be relative to where we started."""
    from strongroom.embedded import EmbeddedSeaweedFS

    monkeypatch.chdir(tmp_path)
    sw = EmbeddedSeaweedFS(Path(".strongroom-data"))
    try:
        sw.start()
        assert sw._answers()
    finally:
        sw.stop()


def test_the_image_gets_every_package_and_its_build_context_nothing_else() -> None:
    """The Dockerfile copies every package pyproject installs, and .dockerignore admits only those
    (a build context never carries .venv, the data directory or its keys)."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    found = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {p.rstrip("*") for p in found["include"]}
    copied = {line.split()[1] for line in (root / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")}
    assert packages <= copied, f"the Dockerfile does not copy {sorted(packages - copied)}"
    ignore = (root / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # everything out, then these in
    admitted = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert admitted == packages | {"pyproject.toml", "README.md"}
