"""Settings, read once from `STRONGROOM_*` environment variables (and secret files).

Only this package reads settings; lower layers receive what they need as arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from archiver.errors import ConfigurationError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STRONGROOM_", extra="ignore")

    mode: Literal["standard", "regulated"] = "standard"
    data_dir: Path = Path(".strongroom-data")
    database_url: str | None = None

    s3_endpoint: str | None = None  # unset: start the embedded SeaweedFS
    s3_bucket: str = "strongroom-archive"
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    # Read-only credentials (GetObject, ListBucket on the bucket) for user SQL; the embedded
    # store makes its own. Unset with an external S3: queries use the archive's credentials.
    s3_query_access_key: SecretStr | None = None
    s3_query_secret_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    embedded_s3_port: int = 8333

    app_secret: SecretStr | None = None
    app_secret_file: Path | None = None
    verify_token: SecretStr | None = None
    verify_token_file: Path | None = None

    # Graph API for media downloads (the token is a system-user access token).
    graph_base_url: str = "https://graph.facebook.com/v23.0"
    graph_token: SecretStr | None = None
    graph_token_file: Path | None = None
    media_max_attempts: int = 8
    media_retry_base_seconds: float = 30.0
    media_concurrency: int = 4

    # Completeness: reconciliation grace, and when app-side silence warns (the app unlinks at ~14 days).
    reconcile_grace_seconds: float = 900.0
    reconcile_interval_seconds: float = 3600.0
    app_silence_warning_days: float = 12.0

    # Retention runs (disposition + shredding restricted subjects) in the worker; 0 = only by CLI/cron.
    retention_run_interval_seconds: float = 86400.0
    # Inbound texts that record an opt-out (comma-separated; case and punctuation ignored).
    opt_out_keywords: str | None = None

    # Auditor API: OIDC (issuer + audience + a JWKS file or URL; role and tenants from claims),
    # human sessions, rate and size limits.
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_file: Path | None = None
    oidc_jwks_url: str | None = None
    oidc_role_claim: str = "strongroom_role"
    oidc_tenants_claim: str = "strongroom_tenants"
    # The console's single sign-on (OIDC authorization code + PKCE) with the issuer above: this
    # client's id (and secret, for a confidential client) and the issuer's two endpoints.
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    oidc_authorization_endpoint: str | None = None
    oidc_token_endpoint: str | None = None
    session_ttl_seconds: float = 8 * 3600
    # The console (/console): a session idle this long is over (the absolute limit is the TTL above);
    # Secure cookies even when a TLS-terminating proxy forwards plain HTTP.
    console_idle_seconds: float = 30 * 60
    console_secure_cookies: bool = False
    api_rate_per_minute: int = 600
    login_rate_per_minute: int = 10
    login_hash_concurrency: int = 2  # password hashes at once (scrypt: 32 MiB each); the rest queue
    # Addresses (IPs or CIDRs, comma-separated) of the reverse proxies whose X-Forwarded-For is
    # believed; unset: the header is ignored and the peer address is the client's.
    trusted_proxies: str | None = None
    api_max_body_bytes: int = 1024 * 1024
    # Refused requests (401/403/429, 404 to a reader) are sealed as counts per who/address/route/reason
    # once per this many seconds (`audit/denied.py`).
    denied_window_seconds: float = 60.0
    # Export bundles through the API, per principal: jobs under way, bundles kept, days kept.
    export_max_active: int = 2
    export_max_stored: int = 10
    export_ttl_days: float = 7.0

    # Rotate the local KEK (re-wrap every data key, destroy the old KEK) when it is older than this
    # many days (0: only `strongroom keys rotate-kek`): a shredded key leaves the backups within it.
    kek_rotation_days: float = 0.0
    # Where the KEK and the signing key live: key files under <data dir>/keys (the embedded default),
    # a PKCS#11 token (an HSM; SoftHSM2 in the tests) or AWS KMS (the KEK a symmetric key, the signing
    # key an ECC_NIST_P256 one: signatures are then ECDSA P-256), see archiver/providers.py.
    key_provider: Literal["file", "pkcs11", "kms"] = "file"
    kms_key_id: str | None = None
    kms_signing_key_id: str | None = None
    kms_region: str = "us-east-1"
    kms_endpoint_url: str | None = None
    pkcs11_module: Path = Path("/usr/lib/softhsm/libsofthsm2.so")
    pkcs11_token: str = "strongroom"
    pkcs11_pin: SecretStr | None = None
    pkcs11_pin_file: Path | None = None
    kek_file: Path | None = None
    signing_key_file: Path | None = None
    blind_index_key_file: Path | None = None

    retention_days: int = 2192  # 6 years: FINRA 4511 / SEC 17a-4(a) default
    max_body_bytes: int = 4 * 1024 * 1024  # Meta payloads reach 3 MB (history)
    seal_interval_seconds: float = 1.0
    seal_batch_max: int = 50_000
    normalize_batch_bytes: int = 4 * 1024 * 1024  # inbox bodies normalised per round, then sealed
    # The signed archive head (every stream's tree head) after a sealing pass, at most this often,
    # stamped by each RFC 3161 TSA listed (comma-separated URLs; unset: no timestamps).
    head_interval_seconds: float = 60.0
    tsa_urls: str | None = None
    tsa_timeout_seconds: float = 10.0
    # Holders outside the archive that receive each stream's newest checkpoint as a C2SP signed
    # note (comma-separated URLs), and the origin its lines begin with ("<log_origin>/<stream>").
    publish_urls: str | None = None
    log_origin: str = "strongroom.invalid/archive"

    tls_certfile: Path | None = None  # serve HTTPS directly (else: behind a TLS-terminating proxy)
    tls_keyfile: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "INFO"

    # -- derived ----------------------------------------------------------------------------

    @property
    def embedded_s3(self) -> bool:
        return not self.s3_endpoint

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def secrets_dir(self) -> Path:
        return self.data_dir / "secrets"

    def sql_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'strongroom.db').resolve()}"

    def key_path(self, name: Literal["kek", "signing", "blind_index"]) -> Path:
        explicit = {"kek": self.kek_file, "signing": self.signing_key_file, "blind_index": self.blind_index_key_file}
        default = {"kek": "kek.key", "signing": "signing-ed25519.pem", "blind_index": "blind-index.key"}
        return explicit[name] or self.keys_dir / default[name]

    def pkcs11_pin_value(self) -> str:
        if self.pkcs11_pin is not None and self.pkcs11_pin.get_secret_value():
            return self.pkcs11_pin.get_secret_value()
        if self.pkcs11_pin_file is not None:
            return self.pkcs11_pin_file.read_text().strip()
        raise ConfigurationError("the pkcs11 key provider needs STRONGROOM_PKCS11_PIN or STRONGROOM_PKCS11_PIN_FILE")

    def graph_token_value(self) -> str | None:
        """The Graph API token from its variable or file; None when media fetching is not configured."""
        if self.graph_token is not None and self.graph_token.get_secret_value():
            return self.graph_token.get_secret_value()
        if self.graph_token_file is not None:
            return self.graph_token_file.read_text().strip()
        return None

    def secret(self, name: Literal["app_secret", "verify_token"]) -> str:
        """A secret from its variable, else its *_FILE, else the embedded default file."""
        value: SecretStr | None = getattr(self, name)
        if value is not None and value.get_secret_value():
            return value.get_secret_value()
        path: Path | None = getattr(self, f"{name}_file") or self.secrets_dir / name
        if path is not None and path.is_file():
            return path.read_text().strip()
        raise ConfigurationError(
            f"no {name}: set STRONGROOM_{name.upper()} or STRONGROOM_{name.upper()}_FILE"
        )
