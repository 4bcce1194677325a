"""Signed job manifests: a JobSpec and its claims in a DSSE envelope, signed with Ed25519.

The envelope follows DSSE (github.com/secure-systems-lab/dsse):

    {"payload": b64(payload), "payloadType": PAYLOAD_TYPE,
     "signatures": [{"keyid": KEY_ID, "sig": b64(Ed25519(PAE(type, payload)))}]}

    PAE(type, body) = "DSSEv1" SP len(type) SP type SP len(body) SP body

The payload is canonical JSON of ``Claims``: the job plus who issued it, for
which marketplace (audience), a random 128-bit nonce and a validity window.
Verification checks the signature over the exact bytes before anything in the
payload is parsed; ``keyid`` is only a hint for finding the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from depin.errors import (
    ExpiredEnvelopeError,
    ForeignAudienceError,
    InputError,
    ManifestError,
    NotYetValidEnvelopeError,
    TamperedEnvelopeError,
    UnknownKeyError,
    WrongPayloadTypeError,
)
from depin.keys import key_id as compute_key_id
from depin.spec import NAME_PATTERN, JobSpec, describe_validation_error

PAYLOAD_TYPE = "application/vnd.depin.job+json; version=1"
DEFAULT_TTL_S = 300
MAX_TTL_S = 24 * 3600
CLOCK_SKEW_S = 60
NONCE_BYTES = 16  # 128 bits
MAX_ENVELOPE_BYTES = 1 << 20
MAX_SIGNATURES = 8


_CLAIM_KEYS = frozenset({"issuer", "audience", "nonce", "issued_at", "expires_at", "job"})
_NAME_RE = re.compile(NAME_PATTERN)
_NONCE_RE = re.compile(r"^[0-9a-f]{32}$")
_KEYID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")


class Claims:
    """What the issuer asserts, inside the signed payload.

    The job is validated on first use: verifying a signature and its claims
    does not pay for parsing the manifest. (A plain class: this is built once
    per envelope on the hot path, where a frozen dataclass costs a few µs more.)
    """

    __slots__ = ("_job", "audience", "expires_at", "issued_at", "issuer", "job_data", "nonce")

    def __init__(
        self,
        issuer: str,
        audience: str,
        nonce: str,
        issued_at: datetime,
        expires_at: datetime,
        job_data: dict[str, Any],
    ) -> None:
        self.issuer, self.audience, self.nonce = issuer, audience, nonce
        self.issued_at, self.expires_at, self.job_data = issued_at, expires_at, job_data
        self._job: JobSpec | None = None

    @property
    def job(self) -> JobSpec:
        if self._job is None:
            try:
                self._job = JobSpec.model_validate(self.job_data)
            except ValidationError as exc:
                raise ManifestError(
                    f"envelope payload: job: {describe_validation_error(exc)}"
                ) from None
        return self._job

    def to_dict(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "audience": self.audience,
            "nonce": self.nonce,
            "issued_at": self.issued_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "job": self.job_data,
        }


@dataclass(frozen=True, slots=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True, slots=True)
class Envelope:
    """A DSSE envelope: the exact payload bytes, their type, and signatures over both."""

    payload: bytes
    payload_type: str
    signatures: tuple[Signature, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "payloadType": self.payload_type,
            "signatures": [
                {"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")}
                for s in self.signatures
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @property
    def digest(self) -> str:
        """The manifest digest: SHA-256 of the signed payload bytes, as ``sha256:<hex>``."""
        return "sha256:" + hashlib.sha256(self.payload).hexdigest()

    @classmethod
    def from_json(cls, text: str | bytes) -> Envelope:
        """Parse the envelope's outer shape; the payload stays opaque bytes."""
        if len(text) > MAX_ENVELOPE_BYTES:
            raise ManifestError(f"envelope is larger than {MAX_ENVELOPE_BYTES} bytes")
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ManifestError(f"envelope is not valid JSON: {exc}") from exc
        except (RecursionError, ValueError) as exc:  # nested too deep; an integer too long
            raise ManifestError(
                "envelope is not valid JSON: nested or sized beyond reason"
            ) from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> Envelope:
        if not isinstance(data, dict) or set(data) != {"payload", "payloadType", "signatures"}:
            raise ManifestError(
                "not a DSSE envelope: expected exactly the keys payload, payloadType, signatures"
            )
        sigs = data["signatures"]
        if not isinstance(sigs, list) or not sigs:
            raise ManifestError("envelope has no signatures")
        if len(sigs) > MAX_SIGNATURES:
            raise ManifestError(f"envelope has more than {MAX_SIGNATURES} signatures")
        if not all(_is_signature(s) for s in sigs):
            raise ManifestError("envelope signature keyid must be 1-128 letters, digits or ._:-")
        if not isinstance(data["payloadType"], str):
            raise ManifestError("envelope payloadType must be a string")
        try:
            payload = base64.b64decode(data["payload"], validate=True)
            signatures = tuple(
                Signature(s["keyid"], base64.b64decode(s["sig"], validate=True)) for s in sigs
            )
        except (binascii.Error, TypeError, KeyError, ValueError) as exc:
            raise ManifestError("envelope payload or signature is not valid base64") from exc
        return cls(payload, data["payloadType"], signatures)


def _is_signature(value: Any) -> bool:
    """A DSSE signature entry whose key id is a plain, short token (it goes into messages)."""
    if not isinstance(value, dict):
        return False
    keyid = value.get("keyid")
    return isinstance(keyid, str) and _KEYID_RE.match(keyid) is not None


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the signature actually covers."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(payload), payload)


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def new_nonce() -> str:
    return secrets.token_hex(NONCE_BYTES)


def sign(
    spec: JobSpec,
    private_key: Ed25519PrivateKey,
    *,
    issuer: str,
    audience: str,
    ttl_s: int = DEFAULT_TTL_S,
    now: datetime | None = None,
) -> Envelope:
    """Wrap ``spec`` in claims and sign it for ``audience`` (a marketplace id)."""
    if not 1 <= ttl_s <= MAX_TTL_S:
        raise InputError(f"ttl_s must be between 1 and {MAX_TTL_S} seconds (got {ttl_s})")
    issued = (now or datetime.now(UTC)).replace(microsecond=0)
    claims = {
        "issuer": issuer,
        "audience": audience,
        "nonce": new_nonce(),
        "issued_at": issued.isoformat(),
        "expires_at": (issued + timedelta(seconds=ttl_s)).isoformat(),
        "job": spec.to_json_dict(),
    }
    payload = canonical_json(claims)
    sig = private_key.sign(pae(PAYLOAD_TYPE, payload))
    keyid = compute_key_id(private_key.public_key())
    return Envelope(payload, PAYLOAD_TYPE, (Signature(keyid, sig),))


KeyLookup = Callable[[str], Iterable[Ed25519PublicKey]]


def verify_signature(
    envelope: Envelope, find_keys: KeyLookup, *, expected_type: str = PAYLOAD_TYPE
) -> tuple[Signature, Ed25519PublicKey]:
    """The first signature that a known key verifies, and that key.

    Checks the payload type first (it is signed too, but a wrong type is a
    clearer message than a bad signature). Raises ``UnknownKeyError`` when no
    signature names a known key and ``TamperedEnvelopeError`` when known keys
    do not verify.
    """
    if envelope.payload_type != expected_type:
        raise WrongPayloadTypeError(
            f"envelope payloadType is {envelope.payload_type!r}; expected {expected_type!r}"
        )
    message = pae(envelope.payload_type, envelope.payload)
    known = False
    for signature in envelope.signatures:
        for public in find_keys(signature.keyid):
            known = True
            try:
                public.verify(signature.sig, message)
            except InvalidSignature:
                continue
            return signature, public
    if not known:
        ids = ", ".join(s.keyid for s in envelope.signatures)
        raise UnknownKeyError(
            f"envelope is signed by unregistered key {ids}: register it with "
            "`depin account create NAME --key KEY` first"
        )
    raise TamperedEnvelopeError(
        "envelope signature does not verify: the payload, its type or the signature was changed "
        "after signing; sign the manifest again"
    )


def parse_claims(envelope: Envelope, *, signer_account: str | None = None) -> Claims:
    """The claims inside a verified envelope's payload, each field checked.

    ``signer_account``: the account of the key that signed, when known; an
    issuer equal to it is a valid name already.
    """
    try:
        data = orjson.loads(envelope.payload)
    except orjson.JSONDecodeError as exc:
        raise ManifestError(f"envelope payload is not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.keys() != _CLAIM_KEYS:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ManifestError(
            f"envelope payload must hold exactly {sorted(_CLAIM_KEYS)} (got {keys})"
        )
    issuer, audience, nonce, job = data["issuer"], data["audience"], data["nonce"], data["job"]
    if issuer != signer_account and (not isinstance(issuer, str) or not _NAME_RE.match(issuer)):
        raise ManifestError("envelope payload: issuer must be an account name")
    if not isinstance(audience, str) or not 0 < len(audience) <= 128:
        raise ManifestError("envelope payload: audience must be a marketplace id")
    if not isinstance(nonce, str) or not _NONCE_RE.match(nonce):
        raise ManifestError("envelope payload: nonce must be 32 lowercase hex digits (128 bits)")
    if not isinstance(job, dict):
        raise ManifestError("envelope payload: job must be a mapping")
    return Claims(
        issuer, audience, nonce, _instant(data, "issued_at"), _instant(data, "expires_at"), job
    )


def _instant(data: dict[str, Any], key: str) -> datetime:
    value = data[key]
    try:
        instant = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        instant = None
    if instant is None or instant.tzinfo is None:
        raise ManifestError(f"envelope payload: {key} must be an ISO 8601 time with a timezone")
    return instant


_SKEW = timedelta(seconds=CLOCK_SKEW_S)
_MAX_TTL = timedelta(seconds=MAX_TTL_S)


def check_claims(claims: Claims, *, audience: str, now: datetime | None = None) -> None:
    """Refuse a foreign audience and times outside the validity window (± clock skew)."""
    now = now or datetime.now(UTC)
    skew = _SKEW
    if claims.audience != audience:
        raise ForeignAudienceError(
            f"envelope was signed for marketplace {claims.audience!r}, not this one "
            f"({audience!r}): sign it again for this marketplace"
        )
    if claims.expires_at - claims.issued_at > _MAX_TTL:
        raise ManifestError(f"envelope validity exceeds the {MAX_TTL_S} s maximum")
    if claims.expires_at <= claims.issued_at:
        raise ManifestError("envelope expires before it is issued: sign the manifest again")
    if claims.issued_at > now + skew:
        raise NotYetValidEnvelopeError(
            f"envelope is issued at {claims.issued_at.isoformat()}, in the future; "
            "check the signer's clock"
        )
    if claims.expires_at < now - skew:
        raise ExpiredEnvelopeError(
            f"envelope expired at {claims.expires_at.isoformat()}: sign the manifest again "
            "(a longer validity: `depin manifest sign --ttl-s N`)"
        )


def looks_like_envelope(text: str) -> bool:
    """True when ``text`` is JSON with a ``payloadType``: an already signed envelope."""
    stripped = text.lstrip()
    if not stripped.startswith("{"):
        return False
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError:
        return False
    return isinstance(data, dict) and "payloadType" in data


def key_id_of(envelope: Envelope) -> str:
    """The key id its first signature names (a hint for finding the key, nothing more)."""
    return envelope.signatures[0].keyid
