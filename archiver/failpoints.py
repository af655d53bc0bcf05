"""Crash injection for the crash-safety tests.

``STRONGROOM_FAILPOINT=<name>`` makes the process SIGKILL itself when it reaches `hit(name)`,
exactly like a power cut at that step. Unset in production, where `hit` is a dict lookup.
"""

from __future__ import annotations

import os
import signal

_ARMED = os.environ.get("STRONGROOM_FAILPOINT", "")

NORMALIZER_POINTS = ("normalize.before_commit",)
SEALER_POINTS = (
    "sealer.before_put",
    "sealer.after_put",
    "sealer.after_readback",
    "sealer.after_commit",
    "sealer.after_checkpoint_put",
)


def hit(name: str) -> None:
    if _ARMED and _ARMED == name:
        os.kill(os.getpid(), signal.SIGKILL)
