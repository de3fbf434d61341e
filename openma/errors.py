"""The one error hierarchy of openma.

Every error carries a stable ``code`` (a short snake_case string that never changes once released) so that a
host can map it to a transport status without matching on messages, and an ``http_status`` hint for hosts
that speak HTTP. Messages are for people and may change.
"""

from __future__ import annotations

from typing import Any, ClassVar


class OpenmaError(Exception):
    """Base class of every error openma raises on purpose."""

    code: ClassVar[str] = "openma_error"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        #: Structured context (ids, field names, valid choices); never secrets.
        self.details: dict[str, Any] = details

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class NotFound(OpenmaError):
    """The addressed row, object or file does not exist for this tenant (or at all)."""

    code = "not_found"
    http_status = 404


class Conflict(OpenmaError):
    """The write lost a race or contradicts the current state (duplicate, archived, condition failed)."""

    code = "conflict"
    http_status = 409


class VersionConflict(Conflict):
    """An optimistic-concurrency check failed: ``expected_version`` is not the stored version."""

    code = "version_conflict"

    def __init__(self, message: str, *, expected: int | None = None, actual: int | None = None, **details: Any) -> None:
        super().__init__(message, expected=expected, actual=actual, **details)
        self.expected = expected
        self.actual = actual


class InvalidInput(OpenmaError):
    """The caller passed something malformed: a bad id, cursor, limit, field, key or payload."""

    code = "invalid_input"
    http_status = 400


class ConfigError(OpenmaError):
    """The configuration cannot work; the message names the bad part and lists the valid choices."""

    code = "config_error"
    http_status = 500


class StorageUnavailable(OpenmaError):
    """The storage engine could not be reached or dropped the connection mid-call.

    The call that raised it wrote nothing (its transaction was rolled back or never committed); it is safe
    to retry.
    """

    code = "storage_unavailable"
    http_status = 503


class LeaseLost(OpenmaError):
    """This holder no longer owns the session's lease; the write was refused and nothing was written."""

    code = "lease_lost"
    http_status = 409


class SessionBusy(OpenmaError):
    """Another actor holds the session and the caller chose not to wait (or waited past its timeout)."""

    code = "session_busy"
    http_status = 409


class SandboxError(OpenmaError):
    """The sandbox provider failed or refused the operation."""

    code = "sandbox_error"
    http_status = 502


class SandboxTimeout(SandboxError):
    """A sandbox operation ran past its deadline; the work it started was stopped."""

    code = "sandbox_timeout"
    http_status = 504


class ModelError(OpenmaError):
    """A model call failed. ``retryable`` is true for rate limits, overload, a dropped connection or a stalled
    stream (the turn loop backs off and retries those); anything else ends the turn with ``error``."""

    code = "model_error"
    http_status = 502

    def __init__(self, message: str, *, retryable: bool = False, **details: Any) -> None:
        super().__init__(message, retryable=retryable, **details)
        self.retryable = retryable


class SandboxRateLimited(SandboxError):
    """The sandbox provider refused the call for a rate or concurrency limit; retry later."""

    code = "sandbox_rate_limited"
    http_status = 429


class SandboxGone(SandboxError):
    """The provider no longer has this sandbox (killed, expired or deleted); create a new one."""

    code = "sandbox_gone"
    http_status = 410


class SandboxRestoreFailed(SandboxError):
    """The session's latest workspace snapshot could not be restored into its new sandbox (retried first).

    Nothing was started in an empty workspace and the snapshot is still the session's latest; ``key`` names
    it and ``cause`` is the code of the last failure. Retry later; an operator can inspect or remove the blob.
    """

    code = "sandbox_restore_failed"
    http_status = 503


class ResyncRequired(Conflict):
    """A read or live tail asked for events the log no longer holds: they were pruned by retention.

    ``retained_from`` is the oldest seq still in the log; a reader restarts from a fresh snapshot and reads
    on from ``after=retained_from - 1``.
    """

    code = "resync_required"
    http_status = 410

    def __init__(self, message: str, *, retained_from: int, **details: Any) -> None:
        super().__init__(message, retained_from=retained_from, **details)
        self.retained_from = retained_from


class SpillIntegrityError(OpenmaError):
    """A spilled event's blob is missing or does not match the hash stored with its stub.

    Never answered with a silent stub: the event is named (``event_id``) so an operator can restore or
    prune it.
    """

    code = "spill_integrity"
    http_status = 500

    def __init__(self, message: str, *, event_id: str, key: str, reason: str, **details: Any) -> None:
        super().__init__(message, event_id=event_id, key=key, reason=reason, **details)
        self.event_id = event_id
        self.key = key
        self.reason = reason


class SecretUnreadable(OpenmaError):
    """A stored secret cannot be decrypted: its key id is unknown, or it does not authenticate.

    ``key_id`` names the key the ciphertext says it was sealed with (never the key or the secret itself).
    An unknown key id means neither ``OPENMA_ROOT_SECRET`` nor ``OPENMA_ROOT_SECRET_PREVIOUS`` holds the root
    secret it came from; a known one that fails means the ciphertext was altered or moved to another row,
    field or tenant (its associated data no longer matches).
    """

    code = "secret_unreadable"
    http_status = 500

    def __init__(self, message: str, *, key_id: str, **details: Any) -> None:
        super().__init__(message, key_id=key_id, **details)
        self.key_id = key_id


__all__ = [
    "Conflict",
    "ConfigError",
    "InvalidInput",
    "LeaseLost",
    "NotFound",
    "OpenmaError",
    "ResyncRequired",
    "SandboxError",
    "SandboxGone",
    "SandboxRateLimited",
    "SandboxTimeout",
    "SecretUnreadable",
    "SessionBusy",
    "SpillIntegrityError",
    "StorageUnavailable",
    "VersionConflict",
]
