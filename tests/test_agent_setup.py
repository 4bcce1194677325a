"""The agent's refusals before it serves anything: no GPU, too few GPUs, no sandbox."""

from __future__ import annotations

import pytest

from depin.errors import ConfigError
from depin.runtime import sandbox
from providers.agent import cli, hardware


def test_without_a_gpu_or_simulated_ones_the_agent_refuses() -> None:
    with pytest.raises(ConfigError, match="--simulate-gpus"):
        hardware.detect(None)


def test_simulated_gpus_stand_in_and_say_so() -> None:
    machine = hardware.detect(2)
    assert (machine.gpus, machine.simulated, machine.gpu_model) == (2, True, None)


def test_a_node_registered_with_more_gpus_than_the_machine_has_is_refused() -> None:
    with pytest.raises(ConfigError, match="registered with 4 GPU"):
        hardware.check(hardware.detect(2), 7, 4, "RTX 4090")


def test_a_node_registered_as_another_model_is_refused() -> None:
    machine = hardware.Machine(1, "L4", 24.0, simulated=False)
    with pytest.raises(ConfigError, match="registered as RTX 4090"):
        hardware.check(machine, 7, 1, "RTX 4090")


def test_without_bubblewrap_the_agent_refuses_unless_told_to_run_unconfined(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sandbox, "unavailable", lambda: "bwrap not found")
    with pytest.raises(ConfigError, match="--insecure-no-sandbox"):
        cli._sandbox_or_refuse(insecure=False)
    cli._sandbox_or_refuse(insecure=True)
    assert "WITHOUT a sandbox" in capsys.readouterr().err
