"""The manifest contract: required fields, defaults, and errors that name the field."""

from __future__ import annotations

import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from depin.errors import ManifestError
from depin.spec import JobSpec, load_job

FULL = textwrap.dedent(
    """
    name: chat-llama3-8b
    command: ["python", "-c", "print('hello from the edge')"]
    resources: {gpus: 1, vram_gib: 16, gpu_models: ["RTX 4090", "L4"], accelerator: gpu}
    placement:
      near: [{lat: 52.52, lon: 13.40}]   # where the users are (optional)
      max_latency_ms: 50                 # round trip from each `near` point (optional)
      regions: [eu-central]              # data residency (optional)
      tiers: [device, edge, regional]    # optional
    pricing: {max_usd_per_gpu_hour: 1.50, budget_usd: 5.00}
    objective: {cost: 0.5, latency: 0.4, reliability: 0.1}
    max_duration_s: 600
    """
)
MINIMAL = "name: tiny\ncommand: [echo, hi]\nresources: {gpus: 1}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def load_text(tmp_path: Path, text: str) -> JobSpec:
    return load_job(write(tmp_path, text))


def test_the_issue_example_manifest_loads(tmp_path: Path) -> None:
    spec = load_text(tmp_path, FULL)
    assert spec.name == "chat-llama3-8b"
    assert spec.resources.gpu_models == ("RTX 4090", "L4")
    assert spec.placement.max_latency_ms == 50
    assert spec.pricing.max_usd_per_gpu_hour == Decimal("1.50")
    assert spec.objective.normalized() == pytest.approx((0.5, 0.4, 0.1))


def test_only_name_command_and_gpus_are_required(tmp_path: Path) -> None:
    spec = load_text(tmp_path, MINIMAL)
    assert spec.resources.accelerator == "gpu"
    assert spec.resources.gpu_models == ()
    assert spec.placement.tiers == ()
    assert spec.objective.normalized() == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert spec.pricing.max_usd_per_gpu_hour is None


def test_gpu_model_names_are_canonicalized(tmp_path: Path) -> None:
    spec = load_text(
        tmp_path, MINIMAL.replace("{gpus: 1}", "{gpus: 1, gpu_models: [rtx4090, h100]}")
    )
    assert spec.resources.gpu_models == ("RTX 4090", "H100-80GB")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            MINIMAL.replace("gpus: 1", "gpus: 1, gpu_count: 2"),
            "unknown key 'gpu_count' under 'resources'",
        ),
        (MINIMAL + "tiers: [edge]\n", "unknown key 'tiers'"),
        (MINIMAL.replace("gpus: 1", "gpus: 0"), "resources.gpus: must be >= 1 (got 0)"),
        (
            MINIMAL + "placement: {near: [{lat: 95, lon: 0}]}\n",
            "placement.near[0].lat: must be <= 90",
        ),
        (MINIMAL + "max_duration_s: 0\n", "max_duration_s: must be >= 1"),
        (
            MINIMAL + "pricing: {max_usd_per_gpu_hour: -1}\n",
            "pricing.max_usd_per_gpu_hour: must be > 0",
        ),
        (MINIMAL + "placement: {max_latency_ms: 30}\n", "max_latency_ms needs at least one point"),
        (
            MINIMAL + "placement: {tiers: [cloud]}\n",
            "placement.tiers[0]: must be 'device', 'edge' or 'regional'",
        ),
        ("name: x\nresources: {gpus: 1}\n", "command: required"),
        ("command: [a]\nresources: {gpus: 1}\n", "name: required"),
        (
            MINIMAL + "objective: {cost: 0, latency: 0, reliability: 0}\n",
            "at least one objective weight",
        ),
    ],
)
def test_invalid_values_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ManifestError) as err:
        load_text(tmp_path, text)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_gpu_model_suggests_the_closest(tmp_path: Path) -> None:
    with pytest.raises(
        ManifestError, match="unknown GPU model 'RTX 4080': did you mean 'RTX 4090'"
    ):
        load_text(tmp_path, MINIMAL.replace("{gpus: 1}", "{gpus: 1, gpu_models: [RTX 4080]}"))


def test_gpu_models_must_match_the_accelerator_kind(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not of accelerator kind 'gpu'"):
        load_text(tmp_path, MINIMAL.replace("{gpus: 1}", "{gpus: 1, gpu_models: [Coral Edge TPU]}"))


def test_malformed_yaml_reports_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"malformed YAML at line 3, column \d+"):
        load_text(tmp_path, "name: x\ncommand: [a\nresources: {gpus: 1}\n")


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="duplicate key 'name'"):
        load_text(tmp_path, MINIMAL + "name: again\n")


def test_a_list_at_the_top_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="expected a mapping"):
        load_text(tmp_path, "- name: x\n")


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read"):
        load_job(tmp_path / "absent.yaml")


def test_specs_round_trip_through_json() -> None:
    spec = JobSpec.model_validate(
        {"name": "a", "command": ["x"], "resources": {"gpus": 2}, "pricing": {"budget_usd": "1.25"}}
    )
    assert JobSpec.model_validate(spec.to_json_dict()) == spec
