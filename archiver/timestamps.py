"""RFC 3161 timestamps from outside: each archive head is stamped by the configured TSAs.

A head commits to every stream's tree head; a TSA's token over the head's stored bytes proves
those trees existed by the token's time, to anyone holding the TSA's certificate, without
trusting our clock. Tokens are kept WORM beside the head, as the TSA sent them (the DER
TimeStampResp), under ``timestamps/<head key>/<tsa>.tsr``; `audit.verify` and the bundle
verifier check them against the TSA certificates they are given.

A TSA that is down or answers wrongly never stops sealing: the head stays unstamped (and is
reported by `verify`), and the next head is stamped again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import httpx
import structlog
from cryptography import x509
from rfc3161_client import HashAlgorithm, PKIStatus, TimestampRequestBuilder, decode_timestamp_response

from archiver.errors import ConfigurationError
from archiver.objectstore import ObjectStore
from exporters.verify_bundle import Stamp, check_token  # one check, in the standalone verifier

__all__ = ["PREFIX", "Stamp", "Timestamper", "check_token", "head_of", "load_certificates", "token_key"]

log = structlog.get_logger("strongroom.timestamps")
PREFIX = "timestamps/"


def token_key(head_key: str, url: str) -> str:
    return f"{PREFIX}{head_key}/{hashlib.sha256(url.encode()).hexdigest()[:16]}.tsr"


def head_of(token: str) -> str:
    """The head key a token key stamps."""
    return token.removeprefix(PREFIX).rsplit("/", 1)[0]


class Timestamper:
    """Asks each configured TSA for a token over some bytes (SHA-256 imprint, nonce, certificate)."""

    def __init__(self, urls: Iterable[str], timeout: float = 10.0) -> None:
        self.urls = [u.strip() for u in urls if u.strip()]
        for u in self.urls:
            if not u.startswith(("https://", "http://")):
                raise ConfigurationError(f"STRONGROOM_TSA_URLS: {u!r} is not an http(s) URL")
        self.timeout = timeout

    def stamp(self, data: bytes) -> list[tuple[str, bytes]]:
        """(TSA URL, DER TimeStampResp) from each TSA that answered with a token over `data`."""
        req = TimestampRequestBuilder().data(data).hash_algorithm(HashAlgorithm.SHA256).nonce(nonce=True) \
            .cert_request(cert_request=True).build()
        digest = hashlib.sha256(data).digest()
        out = []
        for url in self.urls:
            try:
                r = httpx.post(url, content=req.as_bytes(), timeout=self.timeout,
                               headers={"Content-Type": "application/timestamp-query"})
                r.raise_for_status()
                resp = decode_timestamp_response(r.content)
                if resp.status not in (PKIStatus.GRANTED, PKIStatus.GRANTED_WITH_MODS):
                    raise ValueError(f"status {resp.status}: {resp.status_string}")
                if resp.tst_info.message_imprint.message != digest or resp.tst_info.nonce != req.nonce:
                    raise ValueError("the token is for other data, or another request")
            except (httpx.HTTPError, ValueError) as e:
                log.warning("tsa.failed", tsa=url, error=type(e).__name__, detail=str(e)[:200])
                continue
            out.append((url, r.content))
        return out

    def stamp_head(self, store: ObjectStore, head_key: str, data: bytes, retain_until: datetime) -> int:
        """Stamp a stored head and keep the tokens WORM beside it. Returns how many TSAs answered."""
        tokens = self.stamp(data)
        for url, der in tokens:
            store.put_locked(token_key(head_key, url), der, retain_until)
        return len(tokens)


def load_certificates(paths: Iterable[Path]) -> list[x509.Certificate]:
    """TSA root (or TSA) certificates from PEM files, each file one or more certificates."""
    certs: list[x509.Certificate] = []
    for p in paths:
        try:
            certs += x509.load_pem_x509_certificates(Path(p).read_bytes())
        except (OSError, ValueError) as e:
            raise ConfigurationError(f"{p}: not a PEM certificate file ({e})") from e
    return certs
