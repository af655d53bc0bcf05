"""Retention: how long a sealed object is locked.

This is the foundation's single configured period; versioned per-class schedules
(SEC/FINRA/CFTC/MiFID/HIPAA/GDPR) build on `RetentionPolicy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    days: int
    seconds: int = 0  # for tests that need retain-until dates seconds in the future

    def __post_init__(self) -> None:
        if self.days < 0 or self.seconds < 0 or (self.days == 0 and self.seconds == 0):
            raise ValueError("a retention period must be positive")

    def retain_until(self, sealed_at: datetime) -> datetime:
        """Retain-until for an object sealed at `sealed_at` (rounded up to whole seconds)."""
        until = sealed_at + timedelta(days=self.days, seconds=self.seconds)
        return until.replace(microsecond=0) + timedelta(seconds=1)
