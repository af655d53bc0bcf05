"""One error hierarchy for the whole archive.

Every failure that a caller may want to handle derives from `StrongroomError`. Each class says
what it means to every front end: `status` (the HTTP status the API answers with, as an RFC 9457
problem document), `code` (a stable machine-readable name, the problem's ``code`` member) and
`exit_code` (the CLI's exit status, the table in docs/errors.md). Everything that means "the
evidence does not check out" derives from `VerificationError` and carries the evidence in
fields, not only in the message.

Messages are written for the person who made the request: they never carry message content,
phone numbers, secrets or submitted credentials.
"""

from __future__ import annotations

from typing import Any, ClassVar

# CLI exit statuses (docs/errors.md). 1 is "ran, and found something" (a failed verification,
# an incomplete day, open violations, overdue objects); usage errors are 2, as click makes them.
EXIT_OK, EXIT_FINDING, EXIT_INPUT, EXIT_NOT_FOUND, EXIT_DENIED = 0, 1, 2, 3, 4
EXIT_CONFLICT, EXIT_UNAVAILABLE, EXIT_CONFIGURATION, EXIT_INTERNAL = 5, 6, 7, 70


class StrongroomError(Exception):
    """Root of every error raised on purpose by strongroom."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal error"
    exit_code: ClassVar[int] = EXIT_INTERNAL

    def extensions(self) -> dict[str, Any]:
        """Extra members of the problem document (never content or credentials)."""
        return {}


class InvalidInput(StrongroomError, ValueError):
    """The request is well-formed but asks for something that cannot be done as asked."""

    status, code, title, exit_code = 400, "invalid_input", "Invalid input", EXIT_INPUT


class NotFound(StrongroomError, LookupError):
    """Nothing there, or nothing the caller may see (a tenant's record looks the same)."""

    status, code, title, exit_code = 404, "not_found", "Not found", EXIT_NOT_FOUND


class Unauthenticated(StrongroomError):
    """No valid credential. The message never says which part was wrong."""

    status, code, title, exit_code = 401, "unauthenticated", "Authentication required", EXIT_DENIED


class Forbidden(StrongroomError):
    """A valid principal that may not do this (role, tenants, missing second factor)."""

    status, code, title, exit_code = 403, "forbidden", "Forbidden", EXIT_DENIED


class StateConflict(StrongroomError):
    """The request contradicts the current state (a hold already released, a job not done)."""

    status, code, title, exit_code = 409, "conflict", "Conflict", EXIT_CONFLICT


class RateLimited(StrongroomError):
    status, code, title, exit_code = 429, "rate_limited", "Too many requests", EXIT_UNAVAILABLE

    def __init__(self, message: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class Unavailable(StrongroomError):
    """A dependency (database, store, audit trail) could not do its part; nothing was returned."""

    status, code, title, exit_code = 503, "unavailable", "Service unavailable", EXIT_UNAVAILABLE


class RaceError(StrongroomError):
    """Another process committed a conflicting change first; the caller rebuilds and retries."""

    status, code, title, exit_code = 503, "busy", "Busy, retry", EXIT_UNAVAILABLE


class ConfigurationError(StrongroomError):
    """The service is configured in a way that would make it unsafe or unable to run."""

    code, title, exit_code = "configuration", "Configuration error", EXIT_CONFIGURATION


# --- input -------------------------------------------------------------------------------------


class WebhookRejected(StrongroomError):
    """A webhook delivery that must not be stored (bad signature, too large)."""

    code, title, exit_code = "webhook_rejected", "Webhook rejected", EXIT_INPUT

    def __init__(self, status: int, reason: str) -> None:
        self.status = status  # type: ignore[misc]  # per instance: 401, 403 or 413
        self.reason = reason
        super().__init__(reason)


# --- storage -----------------------------------------------------------------------------------


class ObjectStoreError(StrongroomError):
    """An object store call failed for a reason not covered by a subclass."""

    status, code, title, exit_code = 503, "storage_unavailable", "Object store unavailable", EXIT_UNAVAILABLE


class ObjectExistsError(ObjectStoreError):
    """A conditional create found an object already at the key."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"object already exists: {key}")


class ObjectNotFoundError(ObjectStoreError):
    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"object not found: {key}")


class AccessDeniedError(ObjectStoreError):
    """The store refused the call (for a locked object: the lock is doing its job)."""


class ObjectLockError(ObjectStoreError):
    """The bucket or object does not carry the Object Lock settings the archive requires."""

    status, code, title, exit_code = 500, "object_lock_missing", "Object Lock missing", EXIT_CONFIGURATION


class ConflictError(StrongroomError):
    """Different bytes were offered for something that already exists (seq, key, checkpoint)."""

    status, code, title, exit_code = 409, "conflict", "Conflict", EXIT_CONFLICT

    def __init__(self, what: str, expected: str, actual: str) -> None:
        self.what = what
        self.expected = expected
        self.actual = actual
        super().__init__(f"conflict at {what}: existing {expected[:16]}…, offered {actual[:16]}…")


class KeyDestroyedError(StrongroomError):
    """A data key was crypto-shredded; its ciphertext can no longer be read by anyone."""

    status, code, title, exit_code = 410, "shredded", "Erased", EXIT_NOT_FOUND


# --- verification ------------------------------------------------------------------------------


class VerificationError(StrongroomError):
    """Evidence failed to verify. Subclasses keep the evidence in fields."""

    status, code, title, exit_code = 422, "verification_failed", "Verification failed", EXIT_FINDING


class ProofError(VerificationError):
    """A Merkle proof is malformed (wrong size, index out of range, bad hash length)."""


class RootMismatchError(VerificationError):
    def __init__(self, expected: bytes, calculated: bytes, context: str = "") -> None:
        self.expected = expected
        self.calculated = calculated
        prefix = f"{context}: " if context else ""
        super().__init__(
            f"{prefix}root mismatch: expected {expected.hex()}, calculated {calculated.hex()}"
        )


class ChainBrokenError(VerificationError):
    def __init__(self, stream: str, seq: int, expected: str, actual: str, item: str = "") -> None:
        self.stream = stream
        self.seq = seq
        self.expected = expected
        self.actual = actual
        self.item = item
        where = f" in {item}" if item else ""
        super().__init__(
            f"chain broken at stream={stream} seq={seq}{where}: expected {expected}, got {actual}"
        )


class CheckpointSignatureError(VerificationError):
    def __init__(self, item: str, reason: str) -> None:
        self.item = item
        super().__init__(f"checkpoint {item}: {reason}")
