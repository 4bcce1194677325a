"""The SDK's public names: sorted, importable, and exactly these."""

from __future__ import annotations

import depin

EXPECTED = [
    "AsyncClient",
    "CapacityError",
    "Client",
    "ConfigError",
    "ConflictError",
    "DatabaseError",
    "DepinError",
    "Envelope",
    "EnvelopeError",
    "ExecutionError",
    "ExpiredEnvelopeError",
    "ForeignAudienceError",
    "GeoPoint",
    "InputError",
    "InsufficientFundsError",
    "JobSpec",
    "KeyFileError",
    "LedgerError",
    "ManifestError",
    "Marketplace",
    "NodeSpec",
    "NotFoundError",
    "NotYetValidEnvelopeError",
    "Objective",
    "Placement",
    "Pricing",
    "ReplayError",
    "Resources",
    "RevokedKeyError",
    "TamperedEnvelopeError",
    "UnknownGpuModelError",
    "UnknownKeyError",
    "UnschedulableError",
    "WrongPayloadTypeError",
    "load_job",
    "load_submission",
]


def test_all_is_sorted_and_exactly_the_public_api() -> None:
    assert depin.__all__ == sorted(depin.__all__)
    assert depin.__all__ == sorted(EXPECTED)


def test_every_exported_name_resolves() -> None:
    for name in depin.__all__:
        assert getattr(depin, name) is not None


def test_every_error_is_a_depin_error() -> None:
    for name in depin.__all__:
        obj = getattr(depin, name)
        if isinstance(obj, type) and name.endswith("Error"):
            assert issubclass(obj, depin.DepinError)
