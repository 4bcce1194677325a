"""The one exception tree of depin.

Every error a person can cause or fix is a ``DepinError``; its message is one
line that says what went wrong and what to do. The CLI prints it on stderr and
exits 1. Lower-level errors (SQLAlchemy, Ray, cryptography, pydantic) are
mapped at the boundary with ``raise ... from``.

    DepinError
    ├── ConfigError
    ├── InputError
    │   ├── ManifestError
    │   └── UnknownGpuModelError
    ├── NotFoundError
    ├── ConflictError
    ├── KeyFileError
    ├── EnvelopeError
    │   ├── TamperedEnvelopeError
    │   ├── WrongPayloadTypeError
    │   ├── UnknownKeyError
    │   ├── RevokedKeyError
    │   ├── ExpiredEnvelopeError
    │   ├── NotYetValidEnvelopeError
    │   ├── ForeignAudienceError
    │   └── ReplayError
    ├── InsufficientFundsError
    ├── UnschedulableError
    ├── CapacityError
    ├── LedgerError
    ├── ExecutionError
    ├── DatabaseError
    ├── AuthError
    │   ├── UnauthenticatedError
    │   └── ForbiddenError
    ├── RateLimitedError
    ├── RequestTooLargeError
    └── RemoteError

Over HTTP each class is one RFC 9457 problem type (``depin.api.problems``), and
the SDK raises the same class again from it.
"""

from __future__ import annotations

from collections.abc import Sequence


class DepinError(Exception):
    """Base class of every error depin raises on purpose."""


class ConfigError(DepinError):
    """The environment or a setting is wrong (DEPIN_HOME, database URL, Ray address)."""


class InputError(DepinError):
    """A value given by a person is malformed or out of range."""


class ManifestError(InputError):
    """A job manifest is not valid YAML or does not match the JobSpec schema."""


class UnknownGpuModelError(InputError):
    """A GPU model name is not in the catalog."""


class NotFoundError(DepinError):
    """An account, key, node, job or allocation does not exist."""


class ConflictError(DepinError):
    """The thing already exists, or an idempotency key was reused for another request."""


class KeyFileError(DepinError):
    """A key file is missing, unreadable or has unsafe permissions."""


class EnvelopeError(DepinError):
    """A signed envelope was refused; nothing was written."""


class TamperedEnvelopeError(EnvelopeError):
    """The signature does not match the envelope's type and payload."""


class WrongPayloadTypeError(EnvelopeError):
    """The envelope carries a payload type depin does not accept."""


class UnknownKeyError(EnvelopeError):
    """No registered key verifies the envelope."""


class RevokedKeyError(EnvelopeError):
    """The envelope was signed by a key that is revoked or outside its validity."""


class ExpiredEnvelopeError(EnvelopeError):
    """The envelope's expires-at has passed."""


class NotYetValidEnvelopeError(EnvelopeError):
    """The envelope's issued-at lies in the future beyond the allowed clock skew."""


class ForeignAudienceError(EnvelopeError):
    """The envelope was signed for another marketplace."""


class ReplayError(EnvelopeError):
    """The envelope's nonce was seen before."""


class InsufficientFundsError(DepinError):
    """The account balance cannot cover the hold or transfer."""


class UnschedulableError(DepinError):
    """No registered node can ever take the job; carries the reasons."""

    def __init__(self, message: str, reasons: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.reasons = list(reasons)


class CapacityError(DepinError):
    """The node no longer has the free capacity the reservation needs."""


class LedgerError(DepinError):
    """A ledger invariant does not hold, or the hash chain was broken."""


class ExecutionError(DepinError):
    """Ray could not be started or reached, or could not run an allocation."""


class DatabaseError(DepinError):
    """The database cannot be reached or its schema is not usable."""


class AuthError(DepinError):
    """A request to the market's API was not authenticated, or not allowed."""


class UnauthenticatedError(AuthError):
    """A request lacks a valid signature by a registered, usable key (or replays one)."""


class ForbiddenError(AuthError):
    """The signer is known but may not do this (not its job, not its node, not the operator)."""


class RateLimitedError(DepinError):
    """Too many requests from one key or address; retry after the given time."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTooLargeError(DepinError):
    """A request body is larger than the market accepts."""


class RemoteError(DepinError):
    """The market's API could not be reached, or answered outside its contract."""
