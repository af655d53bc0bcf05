"""A local stand-in for the Graph API media endpoints: a real HTTP server on 127.0.0.1.

- ``GET /v23.0/<media-id>`` (bearer token required) → ``{"url", "mime_type", "sha256", "file_size", "id"}``
- ``GET /files/<media-id>?exp=<unix>&sig=<hmac>`` (bearer token required) → the bytes, until the
  signed URL expires (404 after, like Meta's 5-minute URLs)

Per-media failure modes: fail the first N downloads with 500, always fail, serve corrupt
bytes, forget the id (expired media id → 404). Counters let tests see what was asked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Media:
    data: bytes
    mime_type: str = "image/jpeg"
    fail_first: int = 0  # downloads answered 500 before one succeeds
    always_fail: bool = False
    corrupt: bool = False  # serve different bytes than the sha256 says
    sha_hex: bool = False  # sha256 as hex (history style) instead of base64 (live style)

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256(self.data).digest()
        return digest.hex() if self.sha_hex else base64.b64encode(digest).decode()


class GraphStandIn:
    def __init__(self, url_ttl: float = 300.0, version: str = "v23.0") -> None:
        self.token = secrets.token_urlsafe(16)
        self.url_ttl = url_ttl
        self.version = version
        self.media: dict[str, Media] = {}
        self.calls: Counter[str] = Counter()
        self._sig_key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                standin._serve(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/{self.version}"

    def start(self) -> GraphStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(self, media_id: str, data: bytes, **mode: object) -> Media:
        m = Media(data, **mode)  # type: ignore[arg-type]
        self.media[media_id] = m
        return m

    def signed_url(self, media_id: str, ttl: float | None = None) -> str:
        exp = int(time.time() + (self.url_ttl if ttl is None else ttl))
        sig = hmac.new(self._sig_key, f"{media_id}:{exp}".encode(), hashlib.sha256).hexdigest()
        return f"http://127.0.0.1:{self._server.server_address[1]}/files/{media_id}?exp={exp}&sig={sig}"

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str = "application/json") -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        if h.headers.get("Authorization") != f"Bearer {self.token}":
            self._send(h, 401, b'{"error":{"message":"Invalid OAuth access token","code":190}}')
            return
        if parts.path.startswith(f"/{self.version}/"):
            media_id = parts.path.rsplit("/", 1)[1]
            with self._lock:
                self.calls[f"info:{media_id}"] += 1
            m = self.media.get(media_id)
            if m is None:
                self._send(h, 404, b'{"error":{"message":"Unsupported get request","code":100}}')
                return
            info = {"messaging_product": "whatsapp", "url": self.signed_url(media_id), "mime_type": m.mime_type,
                    "sha256": m.sha256, "file_size": len(m.data), "id": media_id}
            self._send(h, 200, json.dumps(info).encode())
        elif parts.path.startswith("/files/"):
            media_id = parts.path.rsplit("/", 1)[1]
            q = parse_qs(parts.query)
            exp, sig = q.get("exp", ["0"])[0], q.get("sig", [""])[0]
            good = hmac.new(self._sig_key, f"{media_id}:{exp}".encode(), hashlib.sha256).hexdigest()
            with self._lock:
                self.calls[f"download:{media_id}"] += 1
                m = self.media.get(media_id)
                failing = m is not None and (m.always_fail or m.fail_first > 0)
                if m is not None and m.fail_first > 0:
                    m.fail_first -= 1
            if m is None or not hmac.compare_digest(sig, good) or int(exp) < time.time():
                self._send(h, 404, b'{"error":{"message":"URL expired or unknown"}}')
            elif failing:
                self._send(h, 500, b'{"error":{"message":"temporarily unavailable"}}')
            else:
                self._send(h, 200, m.data[::-1] if m.corrupt else m.data, m.mime_type)
        else:
            self._send(h, 404, b"{}")
