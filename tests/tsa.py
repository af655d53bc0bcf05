"""A real RFC 3161 time-stamping authority for the tests: `openssl ts -reply` behind HTTP.

Each `LocalTSA` generates its own CA and TSA certificate (critical EKU id-kp-timeStamping), so a
token from one is "from an unknown TSA" to a verifier given another's CA.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CONFIG = """
[ tsa ]
default_tsa = tsa_config
[ tsa_config ]
dir = {dir}
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.crt

signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.3.6.1.4.1.57264.2
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class LocalTSA:
    def __init__(self, name: str = "strongroom test TSA") -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="tsa-")
        self.dir = Path(self._tmp.name)
        now = datetime.now(UTC)
        ca_key, tsa_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        self.ca = (x509.CertificateBuilder().subject_name(_name(name + " CA")).issuer_name(_name(name + " CA"))
                   .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=365))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                  critical=True)
                   .sign(ca_key, hashes.SHA256()))
        self.cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(self.ca.subject)
                     .public_key(tsa_key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=365))
                     .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
                     .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                                    critical=True)
                     .sign(ca_key, hashes.SHA256()))
        pem = serialization.Encoding.PEM
        (self.dir / "ca.crt").write_bytes(self.ca.public_bytes(pem))
        (self.dir / "tsa.crt").write_bytes(self.cert.public_bytes(pem))
        (self.dir / "tsa.key").write_bytes(tsa_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                                 serialization.NoEncryption()))
        (self.dir / "serial").write_text("01\n")
        (self.dir / "tsa.cnf").write_text(CONFIG.format(dir=self.dir))
        self.requests = 0
        self.down = False
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/tsr"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def ca_pem(self) -> Path:
        return self.dir / "ca.crt"

    def reply(self, query: bytes) -> bytes:
        """`openssl ts -reply` for one DER TimeStampReq."""
        with self._lock:  # the serial file is read and written by each reply
            q = self.dir / "query.tsq"
            q.write_bytes(query)
            out = subprocess.run(["openssl", "ts", "-reply", "-config", str(self.dir / "tsa.cnf"), "-queryfile",
                                  str(q), "-out", "/dev/stdout"], capture_output=True, check=True)
            self.requests += 1
            return out.stdout

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        tsa = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if tsa.down or self.headers.get("Content-Type") != "application/timestamp-query":
                    self.send_response(503 if tsa.down else 415)
                    self.end_headers()
                    return
                try:
                    reply = tsa.reply(body)
                except subprocess.CalledProcessError:
                    self.send_response(400)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/timestamp-reply")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._tmp.cleanup()
