"""Rules over what was archived: retention schedules, holds, ledgers, compliance checks."""
