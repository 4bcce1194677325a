"""Errors on the wire: each ``DepinError`` class is one RFC 9457 problem type, both ways.

The server answers a ``DepinError`` with ``application/problem+json``:
``{"type": "/problems/not-found", "title": ..., "status": 404, "detail": <the
one line the CLI prints>}``; the SDK turns the type back into the same class
with the same message. A type is stable: it is the class's name, so renaming
a class is a breaking change of the API.
"""

from __future__ import annotations

import re
from typing import Any

from depin import errors
from depin.errors import DepinError

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "/problems/"

# The HTTP status of each class; a subclass takes its nearest listed ancestor's.
STATUS: dict[type[DepinError], int] = {
    errors.InputError: 422,
    errors.NotFoundError: 404,
    errors.ConflictError: 409,
    errors.CapacityError: 409,
    errors.KeyFileError: 422,
    errors.EnvelopeError: 422,
    errors.ReplayError: 409,
    errors.InsufficientFundsError: 402,
    errors.UnschedulableError: 422,
    errors.UnauthenticatedError: 401,
    errors.ForbiddenError: 403,
    errors.RateLimitedError: 429,
    errors.RequestTooLargeError: 413,
    errors.ExecutionError: 503,
    errors.DatabaseError: 503,
    errors.RemoteError: 502,
    errors.DepinError: 500,
}


def _classes() -> dict[str, type[DepinError]]:
    found = {}
    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, DepinError):
            found[slug(value)] = value
    return found


def slug(cls: type[DepinError]) -> str:
    """``NotFoundError`` -> ``not-found``; ``DepinError`` -> ``depin``."""
    name = cls.__name__.removesuffix("Error")
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def status_of(exc: DepinError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 500


def problem(exc: DepinError, *, instance: str | None = None) -> dict[str, Any]:
    """The problem document for ``exc``."""
    cls = type(exc)
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + slug(cls),
        "title": (cls.__doc__ or cls.__name__).strip().splitlines()[0],
        "status": status_of(exc),
        "detail": str(exc),
    }
    if instance:
        body["instance"] = instance
    if isinstance(exc, errors.UnschedulableError) and exc.reasons:
        body["reasons"] = list(exc.reasons)
    if isinstance(exc, errors.RateLimitedError):
        body["retry_after_s"] = exc.retry_after_s
    return body


CLASSES = _classes()


def error_of(document: Any, status: int) -> DepinError:
    """The ``DepinError`` a problem document stands for (``RemoteError`` when it is not one)."""
    if not isinstance(document, dict) or not isinstance(document.get("detail"), str):
        return errors.RemoteError(f"the market answered HTTP {status} without a problem document")
    kind = str(document.get("type", "")).removeprefix(TYPE_PREFIX)
    cls = CLASSES.get(kind, errors.RemoteError)
    detail = document["detail"]
    if cls is errors.UnschedulableError:
        reasons = document.get("reasons")
        return errors.UnschedulableError(detail, reasons if isinstance(reasons, list) else [])
    if cls is errors.RateLimitedError:
        after = document.get("retry_after_s")
        return errors.RateLimitedError(detail, after if isinstance(after, int | float) else 1.0)
    return cls(detail)
