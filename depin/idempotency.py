"""Idempotency keys: a retried request returns the first result instead of acting twice.

A client names each state-changing request with a key of its own (a UUID by
default) and reuses it when it retries after a timeout or a dropped
connection. The key is claimed by the request's own transaction, first thing,
under a primary key: the same key with the same request returns what the
first one returned; with a different request it is an error. A concurrent
twin blocks on the claim until the first commits, then finds its result.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from depin.db.models import IdempotencyKey
from depin.errors import ConflictError, InputError

T = TypeVar("T")
KEY_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")


class KeyTaken(Exception):
    """Another transaction claimed the key first: retry the request to read its result."""


def request_hash(operation: str, request: Any) -> str:
    body = json.dumps({"operation": operation, "request": request}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def check_key(key: str) -> str:
    if not KEY_PATTERN.match(key):
        raise InputError(
            "idempotency key must be 8-128 letters, digits, '.', '_', ':' or '-' (a UUID will do)"
        )
    return key


def once(
    s: Session,
    key: str | None,
    operation: str,
    request: Any,
    work: Callable[[], T],
) -> T:
    """Run ``work`` unless ``key`` already ran this request, in the caller's transaction.

    ``work`` returns what JSON can hold: a retry with the key gets it back from there.
    """
    if key is None:
        return work()
    digest = request_hash(operation, request)
    existing = s.get(IdempotencyKey, check_key(key), populate_existing=True)
    if existing is None:
        s.add(
            IdempotencyKey(key=key, operation=operation, request_hash=digest, response_json="null")
        )
        try:
            with s.begin_nested():
                s.flush()
        except IntegrityError as exc:
            raise KeyTaken(key) from exc
        result = work()
        s.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.key == key)
            .values(response_json=json.dumps(result, default=str))
        )
        return result
    if existing.operation != operation or existing.request_hash != digest:
        raise ConflictError(
            f"idempotency key {key!r} was already used for a different request "
            f"({existing.operation}); use a new key for a new request"
        )
    return json.loads(existing.response_json)  # type: ignore[no-any-return]
