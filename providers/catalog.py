"""The accelerator catalog: real published specs, one entry per model.

Figures come from the vendors' data sheets. ``fp16_tflops`` is dense FP16
tensor throughput (FP32 accumulate where the sheet gives both);
``int8_tops`` is the vendor's headline INT8 figure (sparse where that is the
only one published, as for Jetson and Coral). ``memory_gib`` is what a job
can use: device memory for discrete GPUs, shared LPDDR5 for Jetson modules,
on-chip SRAM for the Edge TPU.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Literal

from depin.errors import UnknownGpuModelError

AcceleratorKind = Literal["gpu", "tpu", "npu"]
ACCELERATOR_KINDS: tuple[AcceleratorKind, ...] = ("gpu", "tpu", "npu")


@dataclass(frozen=True, slots=True)
class Accelerator:
    """One accelerator model and its published specs."""

    name: str
    kind: AcceleratorKind
    vendor: str
    memory_gib: float
    fp16_tflops: float | None
    int8_tops: float | None
    power_w: float
    tier_hint: Literal["device", "edge", "regional"]
    source: str


CATALOG: tuple[Accelerator, ...] = (
    Accelerator(
        "Jetson AGX Orin 64GB",
        "gpu",
        "NVIDIA",
        64,
        None,
        275,
        60,
        "device",
        "NVIDIA Jetson AGX Orin series data sheet: 275 TOPS (INT8 sparse), 15-60 W, 64 GB LPDDR5",
    ),
    Accelerator(
        "Jetson Orin Nano 8GB",
        "gpu",
        "NVIDIA",
        8,
        None,
        67,
        25,
        "device",
        "NVIDIA Jetson Orin Nano Super data sheet: 67 TOPS (INT8 sparse), 7-25 W, 8 GB LPDDR5",
    ),
    Accelerator(
        "RTX 4090",
        "gpu",
        "NVIDIA",
        24,
        165.2,
        660.6,
        450,
        "edge",
        "NVIDIA Ada Lovelace architecture whitepaper: 165.2 FP16 TFLOPS (FP32 acc), 24 GB GDDR6X",
    ),
    Accelerator(
        "RTX 3090",
        "gpu",
        "NVIDIA",
        24,
        71,
        284,
        350,
        "edge",
        "NVIDIA Ampere GA102 whitepaper: 71 FP16 TFLOPS (FP32 acc), 24 GB GDDR6X, 350 W",
    ),
    Accelerator(
        "L4",
        "gpu",
        "NVIDIA",
        24,
        121,
        485,
        72,
        "edge",
        "NVIDIA L4 data sheet: 121 FP16 TFLOPS dense (242 sparse), 24 GB GDDR6, 72 W",
    ),
    Accelerator(
        "T4",
        "gpu",
        "NVIDIA",
        16,
        65,
        130,
        70,
        "edge",
        "NVIDIA T4 data sheet: 65 FP16 TFLOPS mixed precision, 130 INT8 TOPS, 16 GB GDDR6, 70 W",
    ),
    Accelerator(
        "A10G",
        "gpu",
        "NVIDIA",
        24,
        70,
        140,
        300,
        "regional",
        "AWS EC2 G5 / NVIDIA A10G: 24 GB GDDR6, 70 FP16 tensor TFLOPS, 300 W",
    ),
    Accelerator(
        "L40S",
        "gpu",
        "NVIDIA",
        48,
        362.05,
        733,
        350,
        "regional",
        "NVIDIA L40S data sheet: 362.05 FP16 TFLOPS dense, 48 GB GDDR6, 350 W",
    ),
    Accelerator(
        "A100-80GB",
        "gpu",
        "NVIDIA",
        80,
        312,
        624,
        400,
        "regional",
        "NVIDIA A100 data sheet (SXM): 312 FP16 TFLOPS dense, 80 GB HBM2e, 400 W",
    ),
    Accelerator(
        "H100-80GB",
        "gpu",
        "NVIDIA",
        80,
        989.4,
        1979,
        700,
        "regional",
        "NVIDIA H100 data sheet (SXM): 989.4 FP16 TFLOPS dense, 80 GB HBM3, 700 W",
    ),
    Accelerator(
        "Coral Edge TPU",
        "tpu",
        "Google",
        8 / 1024,
        None,
        4,
        2,
        "device",
        "Coral Edge TPU data sheet: 4 TOPS INT8 at 2 W (0.5 W/TOPS), 8 MB on-chip SRAM",
    ),
)

_BY_NAME: dict[str, Accelerator] = {a.name: a for a in CATALOG}
# Names people type for the same part; keys are normalized (see _normalize).
_ALIASES: dict[str, str] = {
    "4090": "RTX 4090",
    "geforcertx4090": "RTX 4090",
    "3090": "RTX 3090",
    "geforcertx3090": "RTX 3090",
    "a100": "A100-80GB",
    "a10080g": "A100-80GB",
    "h100": "H100-80GB",
    "h10080g": "H100-80GB",
    "h100sxm": "H100-80GB",
    "agxorin": "Jetson AGX Orin 64GB",
    "jetsonagxorin": "Jetson AGX Orin 64GB",
    "orinnano": "Jetson Orin Nano 8GB",
    "jetsonorinnano": "Jetson Orin Nano 8GB",
    "edgetpu": "Coral Edge TPU",
    "coral": "Coral Edge TPU",
    "coraltpu": "Coral Edge TPU",
    "nvidial4": "L4",
    "nvidiat4": "T4",
    "teslat4": "T4",
}


def _normalize(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_NORMALIZED: dict[str, str] = {_normalize(a.name): a.name for a in CATALOG} | _ALIASES


def model_names() -> list[str]:
    """Every canonical model name, in catalog order."""
    return [a.name for a in CATALOG]


def lookup(name: str) -> Accelerator:
    """The catalog entry for ``name`` (case, spaces and dashes do not matter).

    An unknown name raises ``UnknownGpuModelError`` with did-you-mean suggestions.
    """
    exact = _BY_NAME.get(name)  # the catalog's own spelling, as every stored spec has it
    if exact is not None:
        return exact
    canonical = _NORMALIZED.get(_normalize(name))
    if canonical is not None:
        return _BY_NAME[canonical]
    raise UnknownGpuModelError(_unknown_message(name))


def canonical_name(name: str) -> str:
    """The catalog's spelling of a model name."""
    return lookup(name).name


def _unknown_message(name: str) -> str:
    key = _normalize(name)
    close = difflib.get_close_matches(key, list(_NORMALIZED), n=3, cutoff=0.5)
    suggestions = list(dict.fromkeys(_NORMALIZED[c] for c in close))
    if suggestions:
        return f"unknown GPU model {name!r}: did you mean {' or '.join(map(repr, suggestions))}?"
    return f"unknown GPU model {name!r}: known models are {', '.join(model_names())} (`depin gpus`)"
