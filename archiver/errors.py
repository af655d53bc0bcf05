"""One error hierarchy for the whole archive.

Every failure that a caller may want to handle derives from `StrongroomError`; everything
that means "the evidence does not check out" derives from `VerificationError` and carries the
evidence in fields, not only in the message.
"""

from __future__ import annotations


class StrongroomError(Exception):
    """Root of every error raised on purpose by strongroom."""


class RaceError(StrongroomError):
    """Another process committed a conflicting change first; the caller rebuilds and retries."""


class ConfigurationError(StrongroomError):
    """The service is configured in a way that would make it unsafe or unable to run."""


# --- input -------------------------------------------------------------------------------------


class WebhookRejected(StrongroomError):
    """A webhook delivery that must not be stored (bad signature, too large)."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(reason)


# --- storage -----------------------------------------------------------------------------------


class ObjectStoreError(StrongroomError):
    """An object store call failed for a reason not covered by a subclass."""


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


class ConflictError(StrongroomError):
    """Different bytes were offered for something that already exists (seq, key, checkpoint)."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        self.what = what
        self.expected = expected
        self.actual = actual
        super().__init__(f"conflict at {what}: existing {expected[:16]}…, offered {actual[:16]}…")


class KeyDestroyedError(StrongroomError):
    """A data key was crypto-shredded; its ciphertext can no longer be read by anyone."""


# --- verification ------------------------------------------------------------------------------


class VerificationError(StrongroomError):
    """Evidence failed to verify. Subclasses keep the evidence in fields."""


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
