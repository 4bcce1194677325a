"""Provider receipts are a stranger's input: every field is checked, and only ReceiptError escapes.

The envelopes here carry good signatures by a registered key, so each payload
gets past the signature and reaches the field checks.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from depin.keys import key_id
from depin.manifest import Envelope, Signature, pae
from depin.receipts import (
    ACCEPTANCE_TYPE,
    USAGE_TYPE,
    AllocationFacts,
    ReceiptError,
    Usage,
    fact_claims,
    gpu_seconds,
    sign_acceptance,
    sign_usage,
    verify,
    verify_usage,
)

KEY = Ed25519PrivateKey.generate()
KEY_ID = key_id(KEY.public_key())
FACTS = AllocationFacts(
    allocation_id=7,
    job_id=3,
    node_id=2,
    gpus=2,
    price_micro_usd_per_gpu_hour=1_500_000,
    manifest_digest="sha256:" + "ab" * 32,
    market="depin-test",
)
STARTED = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ENDED = STARTED + timedelta(minutes=30)
NAIVE = "2025-03-01T12:00:00"


def find_keys(kid: str) -> list[Ed25519PublicKey]:
    return [KEY.public_key()] if kid == KEY_ID else []


def usage_claims(**changes: Any) -> dict[str, Any]:
    """The claims of a valid usage receipt, with ``changes`` laid over them."""
    claims = {
        "kind": "usage",
        **fact_claims(FACTS),
        "started_at": STARTED.isoformat(),
        "ended_at": ENDED.isoformat(),
        "gpu_seconds": gpu_seconds(FACTS.gpus, STARTED, ENDED),
        "exit_code": 0,
    }
    return claims | changes


def spanning(started: datetime, ended: datetime, **changes: Any) -> dict[str, Any]:
    """Valid usage claims for these times (GPU-seconds recomputed to match)."""
    return usage_claims(
        started_at=started.isoformat(),
        ended_at=ended.isoformat(),
        gpu_seconds=gpu_seconds(FACTS.gpus, started, ended),
        **changes,
    )


def signed(payload: Any, payload_type: str = USAGE_TYPE) -> str:
    """An envelope with a good signature over any payload: bytes as given, anything else as JSON."""
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return Envelope(
        raw, payload_type, (Signature(KEY_ID, KEY.sign(pae(payload_type, raw))),)
    ).to_json()


def refused_for(field: str) -> str:
    """The message pattern of a refusal: one line, naming the allocation and the field."""
    return rf"^allocation 7: usage receipt\b[^\n]*\b{field}\b[^\n]*$"


def test_a_signed_usage_receipt_verifies_to_its_claims() -> None:
    envelope = sign_usage(KEY, FACTS, started_at=STARTED, ended_at=ENDED, exit_code=3)
    usage = verify_usage(envelope.to_json(), FACTS, find_keys)
    assert usage == Usage(KEY_ID, STARTED, ENDED, 3600.0, 3)


@pytest.mark.parametrize("exit_code", [None, 0, 1, 255, -9, -255])
def test_small_integer_exit_codes_and_null_are_accepted(exit_code: int | None) -> None:
    usage = verify_usage(signed(usage_claims(exit_code=exit_code)), FACTS, find_keys)
    assert usage.exit_code == exit_code


def test_times_in_another_offset_are_returned_in_utc() -> None:
    claims = usage_claims(started_at="2025-03-01T13:00:00+01:00")
    usage = verify_usage(signed(claims), FACTS, find_keys)
    assert usage.started_at == STARTED
    assert usage.started_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"started_at": NAIVE, "ended_at": NAIVE, "gpu_seconds": 0.0}, "started_at"),
        ({"started_at": NAIVE}, "started_at"),
        ({"ended_at": "2025-03-01T12:30:00"}, "ended_at"),
    ],
)
def test_times_without_a_timezone_are_refused(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ReceiptError, match=refused_for(field)):
        verify_usage(signed(usage_claims(**changes)), FACTS, find_keys)


@pytest.mark.parametrize("value", [1740830400, 1740830400.5, None, True, "", "yesterday", [NAIVE]])
def test_times_that_are_not_iso_8601_strings_are_refused(value: Any) -> None:
    with pytest.raises(ReceiptError, match=refused_for("started_at")):
        verify_usage(signed(usage_claims(started_at=value)), FACTS, find_keys)


@pytest.mark.parametrize(
    "instant",
    ["9999-12-31T23:59:59+00:00", "9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00"],
)
def test_times_outside_the_supported_years_are_refused(instant: str) -> None:
    claims = usage_claims(started_at=instant, ended_at=instant, gpu_seconds=0.0)
    with pytest.raises(ReceiptError, match=refused_for("started_at")):
        verify_usage(signed(claims), FACTS, find_keys)


def test_an_end_before_the_start_is_refused() -> None:
    claims = usage_claims(started_at=ENDED.isoformat(), ended_at=STARTED.isoformat())
    with pytest.raises(ReceiptError, match=refused_for("ended_at")):
        verify_usage(signed(claims), FACTS, find_keys)


def test_a_duration_beyond_the_maximum_is_refused() -> None:
    claims = spanning(STARTED, STARTED + timedelta(days=32))
    with pytest.raises(ReceiptError, match=refused_for("ended_at")):
        verify_usage(signed(claims), FACTS, find_keys)


@pytest.mark.parametrize("value", ["3600.0", None, True, [3600.0], math.nan, math.inf, -math.inf])
def test_gpu_seconds_that_are_not_a_finite_number_are_refused(value: Any) -> None:
    with pytest.raises(ReceiptError, match=refused_for("gpu_seconds")):
        verify_usage(signed(usage_claims(gpu_seconds=value)), FACTS, find_keys)


@pytest.mark.parametrize("value", [3600.001, 7200.0, -3600.0, 0, 10**400])
def test_gpu_seconds_that_differ_from_the_times_are_refused(value: Any) -> None:
    with pytest.raises(ReceiptError, match=refused_for("gpu_seconds")):
        verify_usage(signed(usage_claims(gpu_seconds=value)), FACTS, find_keys)


@pytest.mark.parametrize("value", [1.0, 1.5, True, False, "0", [0], 256, -256, 10**30])
def test_exit_codes_that_are_not_small_integers_are_refused(value: Any) -> None:
    with pytest.raises(ReceiptError, match=refused_for("exit_code")):
        verify_usage(signed(usage_claims(exit_code=value)), FACTS, find_keys)


@pytest.mark.parametrize("field", ["started_at", "ended_at", "gpu_seconds", "exit_code"])
def test_a_receipt_missing_a_field_is_refused(field: str) -> None:
    claims = usage_claims()
    del claims[field]
    with pytest.raises(ReceiptError, match=refused_for(field)):
        verify_usage(signed(claims), FACTS, find_keys)


@pytest.mark.parametrize("field", ["bonus_micro_usd", "key_id"])
def test_a_receipt_with_unknown_fields_is_refused(field: str) -> None:
    with pytest.raises(ReceiptError, match=refused_for(field)):
        verify_usage(signed(usage_claims(**{field: 1})), FACTS, find_keys)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"allocation_id": 7.0}, "allocation_id"),
        ({"gpus": 2.0}, "gpus"),
        ({"job_id": "3"}, "job_id"),
        ({"price_micro_usd_per_gpu_hour": 1_500_000.0}, "price_micro_usd_per_gpu_hour"),
    ],
)
def test_allocation_facts_of_another_type_are_refused(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ReceiptError, match=refused_for(field)):
        verify_usage(signed(usage_claims(**changes)), FACTS, find_keys)


@pytest.mark.parametrize("payload", [[], "usage", 1, None, True])
def test_a_payload_that_is_not_a_json_object_is_refused(payload: Any) -> None:
    with pytest.raises(ReceiptError, match=r"^allocation 7: usage receipt\b[^\n]*\bobject\b"):
        verify_usage(signed(payload), FACTS, find_keys)


@pytest.mark.parametrize("payload", [b"", b"{", b"\xff\xfe\xff", b"1" * 5000, b"[" * 5000])
def test_a_payload_that_is_not_json_is_refused(payload: bytes) -> None:
    with pytest.raises(ReceiptError, match=r"^allocation 7: usage receipt\b[^\n]*\bJSON\b"):
        verify_usage(signed(payload), FACTS, find_keys)


@pytest.mark.parametrize("text", ["{", "[]", "[" * 100_000, '{"payload": 1}'])
def test_an_envelope_that_is_not_dsse_json_is_refused(text: str) -> None:
    with pytest.raises(ReceiptError, match=r"^allocation 7: usage receipt\b[^\n]*$"):
        verify_usage(text, FACTS, find_keys)


def test_refusals_of_a_strangers_key_id_stay_on_one_line() -> None:
    envelope = json.loads(signed(usage_claims()))
    envelope["signatures"][0]["keyid"] = "evil\nallocation 8: all good"
    with pytest.raises(ReceiptError, match=r"^allocation 7: usage receipt\b[^\n]*$"):
        verify_usage(json.dumps(envelope), FACTS, find_keys)


def test_a_signed_acceptance_verifies() -> None:
    envelope = sign_acceptance(KEY, FACTS, at=STARTED)
    claims = verify(envelope.to_json(), "acceptance", FACTS, find_keys)
    assert claims["key_id"] == KEY_ID


@pytest.mark.parametrize("accepted_at", [NAIVE, 1740830400, None, "9999-12-31T00:00:00+00:00"])
def test_an_acceptance_with_a_bad_time_is_refused(accepted_at: Any) -> None:
    claims = {"kind": "acceptance", **fact_claims(FACTS), "accepted_at": accepted_at}
    with pytest.raises(ReceiptError, match=r"^allocation 7: acceptance receipt\b.*\baccepted_at\b"):
        verify(signed(claims, ACCEPTANCE_TYPE), "acceptance", FACTS, find_keys)


# -- Anything a stranger can send: verified, or refused with a ReceiptError --------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
ISO_TIMES = st.datetimes(timezones=st.none() | st.timezones()).map(datetime.isoformat)


def assert_reads_well(refusal: ReceiptError) -> None:
    """One line, naming the allocation."""
    assert str(refusal).startswith("allocation 7: ")
    assert len(str(refusal).splitlines()) == 1


def verified_or_refused(envelope_json: str) -> None:
    """Either a sound Usage comes back, or a ReceiptError that reads well."""
    try:
        usage = verify_usage(envelope_json, FACTS, find_keys)
    except ReceiptError as exc:
        assert_reads_well(exc)
        return
    assert usage.started_at.utcoffset() == timedelta(0)
    assert timedelta(0) <= usage.ended_at - usage.started_at <= timedelta(days=31)
    assert usage.gpu_seconds == gpu_seconds(FACTS.gpus, usage.started_at, usage.ended_at)
    assert usage.exit_code is None or type(usage.exit_code) is int


@settings(max_examples=300, deadline=None)
@given(payload=JSON_VALUES)
def test_any_signed_json_payload_is_verified_or_refused(payload: Any) -> None:
    verified_or_refused(signed(payload))


@settings(max_examples=300, deadline=None)
@given(
    changes=st.dictionaries(
        st.sampled_from(sorted(usage_claims())) | st.text(max_size=8), JSON_VALUES, max_size=4
    ),
    dropped=st.sets(st.sampled_from(sorted(usage_claims())), max_size=2),
)
def test_any_fields_over_a_valid_receipt_are_verified_or_refused(
    changes: dict[str, Any], dropped: set[str]
) -> None:
    claims = {k: v for k, v in usage_claims(**changes).items() if k not in dropped}
    verified_or_refused(signed(claims))


@settings(max_examples=300, deadline=None)
@given(started=ISO_TIMES | st.text(), ended=ISO_TIMES | st.text(), exit_code=JSON_VALUES)
def test_any_time_strings_are_verified_or_refused(started: str, ended: str, exit_code: Any) -> None:
    claims = usage_claims(started_at=started, ended_at=ended, exit_code=exit_code)
    # The GPU-seconds that would match, so the checks after the times are reached too.
    with contextlib.suppress(ValueError, TypeError):
        claims["gpu_seconds"] = gpu_seconds(
            FACTS.gpus, datetime.fromisoformat(started), datetime.fromisoformat(ended)
        )
    verified_or_refused(signed(claims))


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=64))
def test_any_signed_bytes_are_verified_or_refused(payload: bytes) -> None:
    verified_or_refused(signed(payload))


@settings(max_examples=300, deadline=None)
@given(
    payload=st.binary(max_size=32).map(lambda b: base64.b64encode(b).decode()) | JSON_VALUES,
    payload_type=st.just(USAGE_TYPE) | JSON_VALUES,
    signatures=st.lists(st.fixed_dictionaries({"keyid": JSON_VALUES, "sig": JSON_VALUES}))
    | JSON_VALUES,
)
def test_any_envelope_shaped_json_is_refused(
    payload: Any, payload_type: Any, signatures: Any
) -> None:
    text = json.dumps({"payload": payload, "payloadType": payload_type, "signatures": signatures})
    with pytest.raises(ReceiptError) as refused:
        verify_usage(text, FACTS, find_keys)
    assert_reads_well(refused.value)


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_any_text_is_refused(text: str) -> None:
    with pytest.raises(ReceiptError) as refused:
        verify_usage(text, FACTS, find_keys)
    assert_reads_well(refused.value)


def test_a_receipt_for_one_fence_token_does_not_verify_for_another() -> None:
    """An agent's receipt for an attempt the market gave up on cannot pay for a later one."""
    private = Ed25519PrivateKey.generate()
    first = replace(FACTS, fence="a" * 32)
    end = datetime(2026, 1, 1, 12, tzinfo=UTC)
    usage = sign_usage(
        private, first, started_at=end - timedelta(seconds=5), ended_at=end, exit_code=0
    ).to_json()
    keys = {key_id(private.public_key()): private.public_key()}
    assert verify_usage(usage, first, lambda k: [keys[k]] if k in keys else []).exit_code == 0
    with pytest.raises(ReceiptError, match="fence"):
        verify_usage(
            usage, replace(FACTS, fence="b" * 32), lambda k: [keys[k]] if k in keys else []
        )
