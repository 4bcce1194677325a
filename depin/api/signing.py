"""RFC 9421 HTTP Message Signatures with Ed25519, through the ``http-message-signatures`` library.

Every signed request covers ``@method``, ``@target-uri`` and ``content-digest``
(RFC 9530, SHA-256 of the body, empty included), with the parameters
``created``, ``nonce``, ``keyid``, ``alg="ed25519"`` and the tag ``depin:<market id>``
(so a request signed for one market cannot be replayed to another that knows the key):

    Signature-Input: depin=("@method" "@target-uri" "content-digest");created=...;
                     keyid="<key id>";nonce="<128-bit hex>";alg="ed25519";tag="depin:<market id>"

The client signs with ``Ed25519Auth`` (an ``httpx.Auth``; a retry runs it again,
so each attempt carries a new nonce). The server verifies with ``verify``:
the key comes from its own registry and the algorithm from that key, never
from the request; the signature is fresh (±60 s) and covers the body.
Whether the nonce was seen before is the caller's check (it owns the table).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from http_message_signatures import (
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    InvalidSignature,
)
from http_message_signatures.algorithms import ED25519
from http_message_signatures.exceptions import HTTPMessageSignaturesException

from depin.errors import UnauthenticatedError
from depin.keys import key_id
from depin.manifest import CLOCK_SKEW_S


def tag_for(market_id: str) -> str:
    """The signature tag of requests to ``market_id``: it names the market they are for."""
    return f"depin:{market_id}"


LABEL = "depin"
COVERED = ("@method", "@target-uri")  # and content-digest, added with the body
REQUIRED = ("@method", "@target-uri", "content-digest")
_NONCE_RE = re.compile(r"^[0-9a-f]{32,64}$")


@dataclass(frozen=True, slots=True)
class _Message:
    """The view of a request the library reads: method, absolute URL, header fields."""

    method: str
    url: str
    headers: httpx.Headers


class _OneKey(HTTPSignatureKeyResolver):
    def __init__(self, private: Ed25519PrivateKey | None = None, public: Any = None) -> None:
        self.private, self.public = private, public

    def resolve_private_key(self, key_id: str) -> Ed25519PrivateKey:
        assert self.private is not None
        return self.private

    def resolve_public_key(self, key_id: str) -> Ed25519PublicKey:
        return self.public(key_id)  # type: ignore[no-any-return]


class Ed25519Auth(httpx.Auth):
    """Sign each request (and each retry of it) with one Ed25519 key and a fresh nonce."""

    requires_request_body = True

    def __init__(self, private: Ed25519PrivateKey, market_id: str) -> None:
        self._kid = key_id(private.public_key())
        self._tag = tag_for(market_id)
        self._signer = HTTPMessageSigner(signature_algorithm=ED25519, key_resolver=_OneKey(private))

    def sign(self, request: httpx.Request) -> None:
        """Sign ``request`` in place; a request sent again is signed again, from scratch."""
        for name in ("Signature", "Signature-Input", "Content-Digest"):
            request.headers.pop(name, None)
        message = _Message(request.method, str(request.url), request.headers)
        self._signer.sign(
            message,
            key_id=self._kid,
            nonce=secrets.token_hex(16),
            label=LABEL,
            tag=self._tag,
            covered_component_ids=COVERED,
            body=request.content,
        )

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self.sign(request)
        yield request


@dataclass(frozen=True, slots=True)
class Verified:
    """Who signed a request, and the nonce it may use once."""

    key_id: str
    nonce: str
    created: datetime


def verify(
    method: str,
    url: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    find_key: Callable[[str], Ed25519PublicKey | None],
    market_id: str,
) -> Verified:
    """Check a request's signature for ``market_id``; raise ``UnauthenticatedError`` with the
    reason if it fails.

    ``find_key`` maps a key id to the registered public key (None: not registered).
    """
    if "signature-input" not in {name.lower() for name, _ in headers}:
        raise UnauthenticatedError(
            "this request must be signed (RFC 9421) with one of your registered keys"
        )

    def resolve(kid: str) -> Ed25519PublicKey:
        public = find_key(kid)
        if public is None:
            raise InvalidSignature(f"key {kid!r} is not registered")
        return public

    verifier = HTTPMessageVerifier(
        signature_algorithm=ED25519, key_resolver=_OneKey(public=resolve)
    )
    verifier.max_clock_skew = timedelta(seconds=CLOCK_SKEW_S)
    message = _Message(method, url, httpx.Headers(list(headers)))
    try:
        results = verifier.verify(
            message,
            max_age=timedelta(0),  # created within the clock skew of now, either way
            expect_tag=tag_for(market_id),
            require_components=REQUIRED,
            body=body,
        )
    except (InvalidSignature, HTTPMessageSignaturesException, ValueError) as exc:
        raise UnauthenticatedError(f"request signature refused: {_one_line(exc)}") from None
    params = results[0].parameters
    nonce = params.get("nonce")
    if not isinstance(nonce, str) or not _NONCE_RE.match(nonce):
        raise UnauthenticatedError(
            "request signature refused: its nonce must be 32-64 lowercase hex digits"
        )
    created = datetime.fromtimestamp(int(params["created"]), tz=UTC)
    return Verified(str(params["keyid"]), nonce, created)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__
