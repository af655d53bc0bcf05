"""Who may read the archive: API keys, human accounts with TOTP, OIDC bearer tokens, and roles.

Three kinds of credential, all sent as ``Authorization: Bearer <token>``:

- **API keys** (``sr_<id>_<secret>``) for services: 256 random bits, shown once, stored as a
  SHA-256 (a key this long needs no slow hash). Only the ``ingest`` and ``auditor`` roles may
  be API keys: every role that changes the archive or reaches all tenants is a person with MFA.
- **Human accounts**: server-generated password (scrypt, a memory-hard KDF) plus a TOTP code
  (RFC 6238 via pyotp, a code is accepted once) exchanged for a session token (``srs_…``,
  stored hashed, expiring). The TOTP secret is encrypted under the ``system:auth`` data key.
- **OIDC** bearer tokens (JWTs) from a configured issuer, checked against its JWKS; the role
  and tenants come from claims, and MFA from the ``amr`` claim.

Roles: ``ingest`` (send-log ingest), ``auditor`` (read and export in its tenants), ``compliance``
(holds, erasure decisions, ledgers), ``admin`` (accounts, keys, policies; reads no content),
``regulator`` (break-glass read-only for the designated third party; all tenants by default).
``admin``, ``compliance`` and ``regulator`` need MFA. Tenants are WABA ids; ``None`` = all.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
import pyotp
import sqlalchemy as sa
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from ulid import ULID

from archiver import crypto
from archiver.db import metadata
from archiver.errors import Forbidden, InvalidInput, NotFound, StateConflict, Unauthenticated
from archiver.keys import KeyRing
from archiver.kinds import arr
from archiver.normalize import append_audit
from archiver.sqlutil import Row, as_utc, utcnow

ROLES = ("ingest", "auditor", "compliance", "admin", "regulator", "reviewer")
MFA_ROLES = frozenset({"compliance", "admin", "regulator", "reviewer"})
API_KEY_ROLES = frozenset({"ingest", "auditor"})
ALL_TENANT_ROLES = frozenset({"compliance", "admin", "regulator"})
# Roles that read archived content: an account or key of these roles made by an administrator
# works only once a compliance officer (someone else) approved it — an admin alone reaches no content.
# (a reviewer reads the messages of the supervision queues: review/, review/reads.py)
CONTENT_ROLES = frozenset({"auditor", "compliance", "regulator", "reviewer"})
AUTH_KEY = "system:auth"
MFA_AMR = frozenset({"mfa", "otp", "hwk", "swk", "sms", "fido", "pop"})  # RFC 8176 values meaning a second factor
_SCRYPT = {"n": 2**15, "r": 8, "p": 1}  # ~32 MiB per hash

Ts = sa.DateTime(timezone=True)
principals = sa.Table(
    "principals", metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("tenants", sa.Text, nullable=True),  # JSON list; NULL = every tenant
    sa.Column("password_hash", sa.String(200), nullable=False),
    sa.Column("totp_nonce", sa.LargeBinary, nullable=False),
    sa.Column("totp_secret", sa.LargeBinary, nullable=False),  # AES-GCM under system:auth
    sa.Column("totp_last_step", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("disabled_at", Ts, nullable=True),
    sa.Column("approved_by", sa.String(200), nullable=True),  # who allowed it to read content (None: pending)
    sa.Column("approved_at", Ts, nullable=True),
)
api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("tenants", sa.Text, nullable=True),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("revoked_at", Ts, nullable=True),
    sa.Column("approved_by", sa.String(200), nullable=True),
    sa.Column("approved_at", Ts, nullable=True),
    sa.Index("ix_api_keys_secret", "secret_sha256", unique=True),
)
sessions = sa.Table(
    "sessions", metadata,
    sa.Column("token_sha256", sa.String(64), primary_key=True),
    sa.Column("principal_id", sa.String(26), sa.ForeignKey("principals.id"), nullable=False),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("expires_at", Ts, nullable=False),
    sa.Column("ended_at", Ts, nullable=True),
)
# An account made through the API gets its password and TOTP secret at first sign-in, by the
# person: the administrator only ever sees a one-time enrolment code (stored hashed, 24 h).
enrolments = sa.Table(
    "enrolments", metadata,
    sa.Column("code_sha256", sa.String(64), primary_key=True),
    sa.Column("principal_id", sa.String(26), sa.ForeignKey("principals.id"), nullable=False),
    sa.Column("expires_at", Ts, nullable=False),
    sa.Column("used_at", Ts, nullable=True),
)
ENROLMENT_TTL = timedelta(hours=24)
UNUSABLE = "!"  # a password hash no password matches: the account has not enrolled yet


class AuthError(Unauthenticated):
    """No valid credential (HTTP 401). The message never says which part was wrong."""


class AccountError(InvalidInput):
    """An account or key request that cannot be carried out as asked."""


class AccountNotFound(NotFound, AccountError):
    """No active account or key with that id."""


class AccountForbidden(Forbidden, AccountError):
    """A change this principal may not make (approving its own creation, past its tenants)."""


class AccountStateError(StateConflict, AccountError):
    """The account is not in a state this change applies to."""


@dataclass(frozen=True)
class Principal:
    id: str
    name: str
    role: str
    tenants: frozenset[str] | None  # None: every tenant
    via: str  # api_key | session | oidc
    mfa: bool

    @property
    def actor(self) -> str:
        return f"{self.via}:{self.name}"

    def sees(self, tenant: str | None) -> bool:
        return self.tenants is None or (tenant is not None and tenant in self.tenants)


def _tenants_out(value: str | None) -> frozenset[str] | None:
    return None if value is None else frozenset(json.loads(value))


def _tenants_in(role: str, tenants: Iterable[str] | None) -> str | None:
    if tenants is None:
        if role not in ALL_TENANT_ROLES:
            raise AccountError(f"a {role} must be given its tenants (WABA ids); only "
                               f"{', '.join(sorted(ALL_TENANT_ROLES))} may span all")
        return None
    listed = sorted({t.strip() for t in tenants if t and t.strip()})
    if not listed:
        raise AccountError("tenants must name at least one WABA id")
    return json.dumps(listed)


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = Scrypt(salt=salt, length=32, **_SCRYPT).derive(password.encode())
    return "scrypt${n}${r}${p}$".format(**_SCRYPT) + f"{base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        Scrypt(salt=base64.b64decode(salt), length=32, n=int(n), r=int(r), p=int(p)).verify(
            password.encode(), base64.b64decode(digest))
        return True
    except Exception:  # InvalidKey, or a malformed stored value
        return False


@functools.cache
def _dummy_hash() -> str:
    """A hash to check unknown names against: equal work whether or not the name exists."""
    return hash_password(secrets.token_urlsafe(16))


class Slots:
    """At most `n` password hashes at once in this process (scrypt holds 32 MiB each): 50
    simultaneous sign-ins wait their turn instead of taking 1.6 GB. `peak` is the most seen."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._free = threading.BoundedSemaphore(n)
        self._lock = threading.Lock()
        self.busy = self.peak = 0

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._free:
            with self._lock:
                self.busy += 1
                self.peak = max(self.peak, self.busy)
            try:
                yield
            finally:
                with self._lock:
                    self.busy -= 1


class OidcVerifier:
    """Checks OIDC access/ID tokens: signature (JWKS), issuer, audience, expiry; maps claims."""

    ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"]
    MAX_LIFETIME = 24 * 3600  # seconds an access token may still be valid for (a 100-year `exp` is refused)

    def __init__(self, issuer: str, audience: str, jwks: dict[str, Any] | None = None, jwks_url: str | None = None,
                 role_claim: str = "strongroom_role", tenants_claim: str = "strongroom_tenants") -> None:
        if (jwks is None) == (jwks_url is None):
            raise ValueError("OIDC needs exactly one of a JWKS document or a JWKS URL")
        self.issuer, self.audience = issuer, audience
        self.role_claim, self.tenants_claim = role_claim, tenants_claim
        self._keys = jwt.PyJWKSet.from_dict(jwks) if jwks is not None else None
        self._client = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=600) if jwks_url else None

    def _key(self, token: str) -> jwt.PyJWK:
        if self._client is not None:
            return self._client.get_signing_key_from_jwt(token)
        kid = jwt.get_unverified_header(token).get("kid")
        assert self._keys is not None
        for k in self._keys.keys:
            if kid is None or k.key_id == kid:
                return k
        raise AuthError("unknown signing key")

    def id_token(self, token: str, client_id: str, nonce: str) -> dict[str, Any]:
        """The claims of an OIDC ID token issued to `client_id` for the sign-in that sent `nonce`
        (signature by the issuer's key set, issuer, audience, expiry, nonce).

        Raises:
            AuthError: anything else.
        """
        try:
            jwk = self._key(token)
            algorithms = [jwk.algorithm_name] if jwk.algorithm_name in self.ALGORITHMS else []
            claims: dict[str, Any] = jwt.decode(token, jwk.key, algorithms=algorithms, audience=client_id,
                                                issuer=self.issuer, leeway=30,
                                                options={"require": ["exp", "iat", "sub", "iss", "aud", "nonce"]})
        except (jwt.PyJWTError, jwt.PyJWKClientError, ValueError) as e:
            raise AuthError(f"invalid ID token: {type(e).__name__}") from e
        if not hmac.compare_digest(str(claims.get("nonce")), nonce):
            raise AuthError("the ID token is not for this sign-in (nonce)")
        return claims

    def principal(self, token: str) -> Principal:
        try:
            jwk = self._key(token)  # the key decides the algorithm: a token cannot pick a weaker one
            algorithms = [jwk.algorithm_name] if jwk.algorithm_name in self.ALGORITHMS else []
            claims = jwt.decode(token, jwk.key, algorithms=algorithms, audience=self.audience,
                                issuer=self.issuer, options={"require": ["exp", "iat", "sub", "iss", "aud"]},
                                leeway=30)
        except (jwt.PyJWTError, jwt.PyJWKClientError, ValueError) as e:
            raise AuthError(f"invalid token: {type(e).__name__}") from e
        if not isinstance(claims.get("sub"), str) or not claims["sub"].strip():
            raise AuthError("token names no subject")
        if not isinstance(claims.get("exp"), int | float) or claims["exp"] - time.time() > self.MAX_LIFETIME:
            raise AuthError("token lives longer than an access token may")
        role = claims.get(self.role_claim)
        if role not in ROLES:
            raise AuthError("token carries no strongroom role")
        raw = claims.get(self.tenants_claim)
        if raw == "*" and role in ALL_TENANT_ROLES:
            tenants = None
        elif isinstance(raw, list) and raw and all(isinstance(t, str) for t in raw):
            tenants = frozenset(raw)
        else:
            raise AuthError("token carries no tenants")
        amr = arr(claims.get("amr"))
        return Principal(f"oidc:{claims['sub']}", f"{claims['sub']}@{claims['iss']}", role, tenants, "oidc",
                         bool(MFA_AMR & set(amr)))


class Accounts:
    """Accounts, API keys and sessions; `authenticate` turns a bearer token into a `Principal`."""

    def __init__(self, engine: sa.Engine, keyring: KeyRing, oidc: OidcVerifier | None = None,
                 session_ttl: timedelta = timedelta(hours=8), hashing: Slots | None = None) -> None:
        self.engine, self.keyring, self.oidc, self.session_ttl = engine, keyring, oidc, session_ttl
        self.hashing = hashing or Slots(2)
        self._lock = threading.Lock()

    def _audit(self, action: str, actor: str, details: dict[str, Any]) -> None:
        append_audit(self.engine, self.keyring, "audit", action, actor, details)

    # -- administration -----------------------------------------------------------------------

    def create_user(self, name: str, role: str, tenants: Iterable[str] | None, actor: str,
                    approved: bool = False, enrol: bool = False) -> dict[str, str]:
        """A human account. Returns its password and TOTP secret: shown once, never stored in clear."""
        if role not in ROLES or role == "ingest":
            raise AccountError(f"role must be one of {', '.join(r for r in ROLES if r != 'ingest')}")
        stored_tenants = _tenants_in(role, tenants)
        password, totp = secrets.token_urlsafe(18), pyotp.random_base32()
        nonce, sealed = crypto.encrypt(self.keyring.data_key(AUTH_KEY), totp.encode(), f"totp|{name}".encode())
        pid = str(ULID())
        if enrol:
            hashed = UNUSABLE
        else:
            with self.hashing():
                hashed = hash_password(password)
        code = f"sre_{secrets.token_urlsafe(24)}"
        with self.engine.begin() as conn:
            if conn.execute(sa.select(principals.c.id).where(principals.c.name == name)).first():
                raise AccountError(f"an account named {name!r} exists")
            conn.execute(principals.insert().values(
                id=pid, name=name, role=role, tenants=stored_tenants, password_hash=hashed,
                totp_nonce=nonce, totp_secret=sealed, created_at=utcnow(), created_by=actor,
                **self._approval(role, actor, approved)))
            if enrol:
                conn.execute(enrolments.insert().values(code_sha256=_sha(code), principal_id=pid,
                                                        expires_at=utcnow() + ENROLMENT_TTL))
        self._audit("account.create", actor, {"principal": pid, "name": name, "role": role,
                                              "tenants": json.loads(stored_tenants) if stored_tenants else "*",
                                              "pending_approval": role in CONTENT_ROLES and not approved})
        approval = "pending: a compliance officer must approve it" if role in CONTENT_ROLES and not approved \
            else "approved"
        if enrol:  # the person's secrets are made when they enrol; whoever made the account never sees them
            return {"id": pid, "name": name, "role": role, "enrolment_code": code, "approval": approval,
                    "enrolment_expires_at": (utcnow() + ENROLMENT_TTL).isoformat(),
                    "next": "give the person this code once, out of band: they enrol at POST /api/v1/auth/enrol"}
        return {"id": pid, "name": name, "role": role, "password": password, "totp_secret": totp,
                "totp_uri": pyotp.TOTP(totp).provisioning_uri(name=name, issuer_name="strongroom"),
                "approval": approval}

    def enrol(self, name: str, code: str, now: datetime | None = None) -> dict[str, str]:
        """First sign-in: the person exchanges the one-time code for their password and TOTP secret."""
        now = now or utcnow()
        password, totp = secrets.token_urlsafe(18), pyotp.random_base32()
        nonce, sealed = crypto.encrypt(self.keyring.data_key(AUTH_KEY), totp.encode(), f"totp|{name}".encode())
        with self.hashing():
            hashed = hash_password(password)
        with self._lock, self.engine.begin() as conn:
            row = conn.execute(sa.select(enrolments, principals.c.name).join(
                principals, principals.c.id == enrolments.c.principal_id)
                .where(enrolments.c.code_sha256 == _sha(code))).first()
            if row is None or row.name != name or row.used_at is not None or as_utc(row.expires_at) <= now:
                raise AuthError("invalid enrolment code")
            conn.execute(enrolments.update().where(enrolments.c.code_sha256 == row.code_sha256)
                         .values(used_at=now))
            conn.execute(principals.update().where(principals.c.id == row.principal_id).values(
                password_hash=hashed, totp_nonce=nonce, totp_secret=sealed, totp_last_step=0))
        self._audit("account.enrol", f"enrol:{name}", {"principal": row.principal_id})
        return {"name": name, "password": password, "totp_secret": totp,
                "totp_uri": pyotp.TOTP(totp).provisioning_uri(name=name, issuer_name="strongroom")}

    @staticmethod
    def _approval(role: str, actor: str, approved: bool) -> dict[str, Any]:
        if role in CONTENT_ROLES and not approved:
            return {"approved_by": None, "approved_at": None}
        return {"approved_by": actor, "approved_at": utcnow()}

    def approve(self, principal_id: str, approver: Principal) -> dict[str, Any]:
        """Let a pending account or key read content. The approver is a compliance officer who
        neither created it nor is it, and whose tenants cover its tenants."""
        for table, kind in ((principals, "user"), (api_keys, "api_key")):
            with self.engine.begin() as conn:
                r = conn.execute(sa.select(table).where(table.c.id == principal_id)).first()
                if r is None:
                    continue
                if r.approved_at is not None:
                    raise AccountStateError(f"{kind} {principal_id} is approved already")
                if approver.id == r.id or r.created_by in (approver.actor, f"session:{approver.name}"):
                    raise AccountForbidden("approval needs a second person: not the one who created it")
                theirs = _tenants_out(r.tenants)
                if approver.tenants is not None and (theirs is None or not theirs <= approver.tenants):
                    raise AccountForbidden("its tenants reach past yours")
                conn.execute(table.update().where(table.c.id == principal_id, table.c.approved_at.is_(None))
                             .values(approved_by=approver.actor, approved_at=utcnow()))
            self._audit("account.approve", approver.actor, {kind: principal_id, "role": r.role, "name": r.name,
                                                             "created_by": r.created_by})
            return {"id": principal_id, "kind": kind, "approved_by": approver.actor}
        raise AccountNotFound(f"no account or key {principal_id}")

    def disable_user(self, principal_id: str, actor: str) -> None:
        with self.engine.begin() as conn:
            n = conn.execute(principals.update().where(principals.c.id == principal_id,
                                                       principals.c.disabled_at.is_(None)).values(disabled_at=utcnow())).rowcount
            conn.execute(sessions.update().where(sessions.c.principal_id == principal_id,
                                                 sessions.c.ended_at.is_(None)).values(ended_at=utcnow()))
        if not n:
            raise AccountNotFound(f"no active account {principal_id}")
        self._audit("account.disable", actor, {"principal": principal_id})

    def create_api_key(self, name: str, role: str, tenants: Iterable[str] | None, actor: str,
                       approved: bool = False) -> dict[str, str]:
        """A service key. Returns the token: shown once; only its SHA-256 is kept."""
        if role not in API_KEY_ROLES:
            raise AccountError(f"API keys are for {' and '.join(sorted(API_KEY_ROLES))}; {role} is a person with MFA")
        stored_tenants = _tenants_in(role, tenants)
        key_id, secret = str(ULID()), secrets.token_urlsafe(32)
        token = f"sr_{key_id}_{secret}"
        with self.engine.begin() as conn:
            conn.execute(api_keys.insert().values(id=key_id, name=name, role=role, tenants=stored_tenants,
                                                  secret_sha256=_sha(token), created_at=utcnow(), created_by=actor,
                                                  **self._approval(role, actor, approved)))
        self._audit("api_key.create", actor, {"key": key_id, "name": name, "role": role,
                                              "tenants": json.loads(stored_tenants) if stored_tenants else "*"})
        return {"id": key_id, "name": name, "role": role, "token": token}

    def revoke_api_key(self, key_id: str, actor: str) -> None:
        with self.engine.begin() as conn:
            n = conn.execute(api_keys.update().where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                             .values(revoked_at=utcnow())).rowcount
        if not n:
            raise AccountNotFound(f"no active API key {key_id}")
        self._audit("api_key.revoke", actor, {"key": key_id})

    def list(self) -> list[dict[str, Any]]:
        """Accounts and keys, without any secret or hash."""
        def plain(r: Row, kind: str, ended: Any) -> dict[str, Any]:
            return {"kind": kind, "id": r.id, "name": r.name, "role": r.role,
                    "tenants": json.loads(r.tenants) if r.tenants else "*",
                    "created_at": as_utc(r.created_at).isoformat(), "created_by": r.created_by,
                    "approved_by": r.approved_by, "pending_approval": r.approved_at is None,
                    "ended_at": as_utc(ended).isoformat() if ended else None}
        with self.engine.connect() as conn:
            users = conn.execute(sa.select(principals).order_by(principals.c.created_at)).all()
            keys = conn.execute(sa.select(api_keys).order_by(api_keys.c.created_at)).all()
        return [plain(r, "user", r.disabled_at) for r in users] + [plain(r, "api_key", r.revoked_at) for r in keys]

    # -- signing in ---------------------------------------------------------------------------

    def login(self, name: str, password: str, otp: str, now: datetime | None = None) -> tuple[str, datetime]:
        """Password + TOTP → session token (returned once, stored hashed). One generic error for all failures."""
        now = now or utcnow()
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(principals).where(principals.c.name == name)).first()
        with self.hashing():
            ok = check_password(password, row.password_hash if row is not None else _dummy_hash())
        if row is None or not ok or row.disabled_at is not None or row.approved_at is None:
            raise AuthError("invalid credentials")
        secret = crypto.decrypt(self.keyring.data_key(AUTH_KEY), row.totp_nonce, row.totp_secret,
                                f"totp|{row.name}".encode()).decode()
        totp = pyotp.TOTP(secret)
        step = next((totp.timecode(now) + d for d in (0, -1, 1)  # one step of clock skew either way
                     if hmac.compare_digest(totp.generate_otp(totp.timecode(now) + d), otp.strip())), None)
        with self._lock, self.engine.begin() as conn:
            # a code is good once: the step must be newer than the last one used (replay guard)
            used = step is not None and conn.execute(
                principals.update().where(principals.c.id == row.id, principals.c.totp_last_step < step)
                .values(totp_last_step=step)).rowcount == 1
            if not used:
                raise AuthError("invalid credentials")
            token = f"srs_{secrets.token_urlsafe(32)}"
            expires = now + self.session_ttl
            conn.execute(sessions.insert().values(token_sha256=_sha(token), principal_id=row.id, created_at=now,
                                                  expires_at=expires))
        self._audit("session.start", f"session:{row.name}", {"principal": row.id, "role": row.role,
                                                             "break_glass": row.role == "regulator"})
        return token, expires

    def logout(self, token: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sessions.update().where(sessions.c.token_sha256 == _sha(token),
                                                 sessions.c.ended_at.is_(None)).values(ended_at=utcnow()))

    def authenticate(self, authorization: str | None, now: datetime | None = None) -> Principal:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise AuthError("missing bearer token")
        token = authorization[7:].strip()
        now = now or utcnow()
        if token.startswith("sr_"):
            with self.engine.connect() as conn:
                r = conn.execute(sa.select(api_keys).where(api_keys.c.secret_sha256 == _sha(token))).first()
            if r is None or r.revoked_at is not None or r.approved_at is None:
                raise AuthError("invalid token")
            return Principal(r.id, r.name, r.role, _tenants_out(r.tenants), "api_key", False)
        if token.startswith("srs_"):
            with self.engine.connect() as conn:
                r = conn.execute(sa.select(principals, sessions.c.expires_at, sessions.c.ended_at).join(
                    sessions, sessions.c.principal_id == principals.c.id)
                    .where(sessions.c.token_sha256 == _sha(token))).first()
            if r is None or r.ended_at is not None or r.disabled_at is not None or r.approved_at is None \
                    or as_utc(r.expires_at) <= now:
                raise AuthError("invalid token")
            return Principal(r.id, r.name, r.role, _tenants_out(r.tenants), "session", True)
        if self.oidc is not None and token.count(".") == 2:
            return self.oidc.principal(token)
        raise AuthError("invalid token")


class RateLimiter:
    """Token buckets per client: `rate` requests per `per` seconds, bursting to `rate`."""

    def __init__(self, rate: int, per: float = 60.0) -> None:
        self.rate, self.per = rate, per
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """0 if allowed, else the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(client, (float(self.rate), now))
            tokens = min(float(self.rate), tokens + (now - at) * self.rate / self.per)
            if tokens < 1:
                self._buckets[client] = (tokens, now)
                return (1 - tokens) * self.per / self.rate
            self._buckets[client] = (tokens - 1, now)
            if len(self._buckets) > 100_000:  # forget idle clients
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < self.per}
            return 0.0
