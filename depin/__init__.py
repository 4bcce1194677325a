"""depin: an open marketplace client and scheduler for edge GPUs.

The public API, re-exported from the modules that own it. Names resolve on first
use (PEP 562), so importing one submodule, e.g. in a Ray worker, does not import
them all.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from depin.async_client import (
        AsyncClient,
    )
    from depin.client import (
        Client,
        load_submission,
    )
    from depin.errors import (
        CapacityError,
        ConfigError,
        ConflictError,
        DatabaseError,
        DepinError,
        EnvelopeError,
        ExecutionError,
        ExpiredEnvelopeError,
        ForeignAudienceError,
        InputError,
        InsufficientFundsError,
        KeyFileError,
        LedgerError,
        ManifestError,
        NotFoundError,
        NotYetValidEnvelopeError,
        ReplayError,
        RevokedKeyError,
        TamperedEnvelopeError,
        UnknownGpuModelError,
        UnknownKeyError,
        UnschedulableError,
        WrongPayloadTypeError,
    )
    from depin.manifest import (
        Envelope,
    )
    from depin.market import (
        Marketplace,
    )
    from depin.spec import (
        GeoPoint,
        JobSpec,
        NodeSpec,
        Objective,
        Placement,
        Pricing,
        Resources,
        load_job,
    )

_EXPORTS: dict[str, str] = {
    "AsyncClient": "depin.async_client",
    "CapacityError": "depin.errors",
    "Client": "depin.client",
    "ConfigError": "depin.errors",
    "ConflictError": "depin.errors",
    "DatabaseError": "depin.errors",
    "DepinError": "depin.errors",
    "Envelope": "depin.manifest",
    "EnvelopeError": "depin.errors",
    "ExecutionError": "depin.errors",
    "ExpiredEnvelopeError": "depin.errors",
    "ForeignAudienceError": "depin.errors",
    "GeoPoint": "depin.spec",
    "InputError": "depin.errors",
    "InsufficientFundsError": "depin.errors",
    "JobSpec": "depin.spec",
    "KeyFileError": "depin.errors",
    "LedgerError": "depin.errors",
    "ManifestError": "depin.errors",
    "Marketplace": "depin.market",
    "NodeSpec": "depin.spec",
    "NotFoundError": "depin.errors",
    "NotYetValidEnvelopeError": "depin.errors",
    "Objective": "depin.spec",
    "Placement": "depin.spec",
    "Pricing": "depin.spec",
    "ReplayError": "depin.errors",
    "Resources": "depin.spec",
    "RevokedKeyError": "depin.errors",
    "TamperedEnvelopeError": "depin.errors",
    "UnknownGpuModelError": "depin.errors",
    "UnknownKeyError": "depin.errors",
    "UnschedulableError": "depin.errors",
    "WrongPayloadTypeError": "depin.errors",
    "load_job": "depin.spec",
    "load_submission": "depin.client",
}

__all__ = [
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

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'depin' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
