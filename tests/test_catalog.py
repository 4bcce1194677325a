"""The accelerator catalog: the models the issue names, with sane published specs."""

from __future__ import annotations

import pytest

from depin.errors import UnknownGpuModelError
from providers.catalog import CATALOG, lookup, model_names

REQUIRED = [
    "Jetson AGX Orin 64GB",
    "Jetson Orin Nano 8GB",
    "RTX 4090",
    "RTX 3090",
    "L4",
    "T4",
    "A10G",
    "A100-80GB",
    "H100-80GB",
    "Coral Edge TPU",
]


def test_every_required_model_is_in_the_catalog() -> None:
    assert set(REQUIRED) <= set(model_names())


@pytest.mark.parametrize("accelerator", CATALOG, ids=lambda a: a.name)
def test_every_entry_has_memory_power_throughput_and_a_source(accelerator) -> None:  # type: ignore[no-untyped-def]
    assert accelerator.memory_gib > 0
    assert accelerator.power_w > 0
    assert accelerator.fp16_tflops or accelerator.int8_tops
    assert accelerator.source


def test_published_figures_match_the_data_sheets() -> None:
    assert lookup("H100-80GB").memory_gib == 80
    assert lookup("L4").power_w == 72
    assert lookup("Coral Edge TPU").int8_tops == 4
    assert lookup("Coral Edge TPU").kind == "tpu"


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        ("rtx 4090", "RTX 4090"),
        ("RTX-4090", "RTX 4090"),
        ("4090", "RTX 4090"),
        ("a100", "A100-80GB"),
        ("h100", "H100-80GB"),
        ("edge tpu", "Coral Edge TPU"),
        ("l4", "L4"),
    ],
)
def test_lookup_ignores_case_spaces_and_dashes(typed: str, canonical: str) -> None:
    assert lookup(typed).name == canonical


def test_an_unknown_model_suggests_close_names() -> None:
    with pytest.raises(UnknownGpuModelError, match="did you mean 'A100-80GB'"):
        lookup("A100-40GB")


def test_an_unknown_model_with_no_close_match_lists_the_catalog() -> None:
    with pytest.raises(UnknownGpuModelError, match="known models are Jetson AGX Orin 64GB"):
        lookup("Voodoo")
