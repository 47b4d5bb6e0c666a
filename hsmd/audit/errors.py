"""The audit trail's own errors, shared by the log, its checkpoints and its verifier."""

from __future__ import annotations

from hsmd.errors import BackendUnavailable, InternalError


class AuditUnavailable(BackendUnavailable):
    """The audit log cannot take an event now; the request fails closed (UNAVAILABLE)."""


class AuditCorrupt(InternalError):
    """The log file does not hold what the daemon wrote; an operator has to look at it."""


class AuditBroken(AuditCorrupt):
    """The log does not match its checkpoint, or its checkpoint files are wrong: start-up stops
    until an operator restores the files or archives them with `hsmd audit reset`."""


class AuditIndexFailed(AuditUnavailable):
    """The audit index cannot be read or written; the log itself is unaffected, and a restart
    builds the index again from it."""
