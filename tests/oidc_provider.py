"""A local OpenID Connect provider for the console's single sign-on tests: a real HTTP server with an
authorization endpoint (it signs in whoever the test says, no page) and a token endpoint that
enforces the authorization code's one use, its redirect URI and client, and PKCE S256 — as an
issuer does. Tokens are RS256 JWTs; the key set is written as a JWKS file for the archive."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa


class OidcProvider:
    def __init__(self, jwks_file: Path, client_id: str = "strongroom-console", audience: str = "strongroom") -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.client_id, self.audience = client_id, audience
        self.claims: dict[str, Any] = {}  # who signs in next (the test sets it)
        self.codes: dict[str, dict[str, Any]] = {}
        self.token_requests: list[dict[str, str]] = []
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwks_file.write_text(json.dumps({"keys": [{**jwk, "kid": "idp-1", "use": "sig", "alg": "RS256"}]}))
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                url = urlparse(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path != "/authorize" or q.get("response_type") != "code" or q.get("client_id") != provider.client_id \
                        or q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
                    self.send_response(400)
                    self.end_headers()
                    return
                code = secrets.token_urlsafe(16)
                provider.codes[code] = {"challenge": q["code_challenge"], "redirect_uri": q["redirect_uri"],
                                        "nonce": q.get("nonce"), "claims": dict(provider.claims)}
                self.send_response(302)
                self.send_header("Location", q["redirect_uri"] + "?" + urlencode({"code": code, "state": q["state"]}))
                self.end_headers()

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode()
                form = {k: v[0] for k, v in parse_qs(body).items()}
                provider.token_requests.append(form)
                grant = provider.codes.pop(form.get("code", ""), None)  # a code is good once
                verifier = form.get("code_verifier", "")
                challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
                if self.path != "/token" or grant is None or form.get("grant_type") != "authorization_code" \
                        or form.get("client_id") != provider.client_id or form.get("redirect_uri") != grant["redirect_uri"] \
                        or challenge != grant["challenge"]:
                    self._json(400, {"error": "invalid_grant"})
                    return
                now = int(time.time())
                base = {"iss": provider.issuer, "iat": now, "exp": now + 600, **grant["claims"]}
                self._json(200, {
                    "token_type": "Bearer", "expires_in": 600,
                    "access_token": provider.sign({**base, "aud": provider.audience}),
                    "id_token": provider.sign({**base, "aud": provider.client_id, "nonce": grant["nonce"]})})

            def _json(self, status: int, doc: dict[str, Any]) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "idp-1"})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
