"""What the agent's machine has, and whether that covers the node it serves.

With NVIDIA's management library (``nvidia-ml-py``, imported as ``pynvml``) present
and a driver loaded, the GPUs are read from it. Without a GPU (CI, a laptop demo),
``--simulate-gpus N`` stands in, and the node is shown as simulated.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from depin.errors import ConfigError, UnknownGpuModelError
from providers.catalog import canonical_name


@dataclass(frozen=True, slots=True)
class Machine:
    gpus: int
    gpu_model: str | None  # the catalog's name; None when simulated or not in the catalog
    vram_gib: float | None
    simulated: bool


def detect(simulate_gpus: int | None) -> Machine:
    """The machine's GPUs; ``simulate_gpus`` stands in where there are none to read."""
    found = _nvml()
    if found is not None and found.gpus > 0:
        return found
    if simulate_gpus is not None:
        return Machine(simulate_gpus, None, None, simulated=True)
    raise ConfigError(
        "no NVIDIA GPU found (nvidia-ml-py absent or no driver): pass --simulate-gpus N to "
        "stand in on a machine without one"
    )


def check(machine: Machine, node_id: int, gpus: int, gpu_model: str) -> None:
    """Refuse to serve a node registered with more (or other) GPUs than the machine has."""
    if machine.gpus < gpus:
        raise ConfigError(
            f"node {node_id} is registered with {gpus} GPU(s) but this machine has "
            f"{machine.gpus}: register what it has"
        )
    if machine.gpu_model is not None and machine.gpu_model != gpu_model:
        raise ConfigError(
            f"node {node_id} is registered as {gpu_model} but this machine has {machine.gpu_model}"
        )


def _nvml() -> Machine | None:
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver: the library is there, the GPUs are not
        return None
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            return None
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = _text(pynvml.nvmlDeviceGetName(handle))
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30
        return Machine(count, _model(name), round(memory, 1), simulated=False)
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _model(name: str) -> str | None:
    """NVML's name (``NVIDIA GeForce RTX 4090``) as the catalog's, if the catalog has it."""
    for candidate in (name, name.removeprefix("NVIDIA ").removeprefix("GeForce ")):
        with contextlib.suppress(UnknownGpuModelError):
            return canonical_name(candidate)
    return None
