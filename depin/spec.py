"""User-facing models: what a developer asks for and what a provider offers.

Prices here are decimal USD, as people write them; they become integer
micro-USD once, at the boundary (``depin.money``). Unknown keys are errors that
name the key; values out of range are errors that name the field and range.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from depin.errors import InputError, ManifestError, UnknownGpuModelError
from providers.catalog import AcceleratorKind, canonical_name, lookup

Tier = Literal["device", "edge", "regional"]
Network = Literal["fiber", "5g", "lte", "wifi"]
TIERS: tuple[Tier, ...] = ("device", "edge", "regional")
NETWORKS: tuple[Network, ...] = ("fiber", "5g", "lte", "wifi")

NAME_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
REGION_PATTERN = r"^[a-z]{2,12}(-[a-z0-9]{1,12}){0,3}$"
MAX_GPUS_PER_JOB = 64
MAX_REPLICAS = 64
MAX_DURATION_S = 7 * 24 * 3600
DEFAULT_DURATION_S = 3600

Usd = Annotated[Decimal, Field(gt=0, le=1_000_000, max_digits=16, decimal_places=6)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class GeoPoint(_Strict):
    """A place on Earth in decimal degrees (WGS 84)."""

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class Resources(_Strict):
    """What one replica of the job needs, all on one node."""

    # Counts are integers as written (StrictInt): `gpus: true` is a mistake, not one GPU.
    gpus: StrictInt = Field(ge=1, le=MAX_GPUS_PER_JOB)
    vram_gib: float | None = Field(default=None, ge=0, le=1024)
    gpu_models: tuple[str, ...] = ()
    accelerator: AcceleratorKind = "gpu"
    # Host memory for the job's processes, enforced by the node's sandbox (default: the
    # agent's, 4 GiB).
    memory_gib: float | None = Field(default=None, gt=0, le=4096)

    @field_validator("gpu_models", mode="before")
    @classmethod
    def _known_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            return value
        try:
            return tuple(dict.fromkeys(canonical_name(str(v)) for v in value))
        except UnknownGpuModelError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _models_match_accelerator(self) -> Resources:
        wrong = [m for m in self.gpu_models if lookup(m).kind != self.accelerator]
        if wrong:
            raise ValueError(
                f"gpu_models {', '.join(wrong)} are not of accelerator kind {self.accelerator!r}"
            )
        return self


class Placement(_Strict):
    """Where the job may run: near its users, in regions, on tiers."""

    near: tuple[GeoPoint, ...] = ()
    max_latency_ms: float | None = Field(default=None, gt=0, le=10_000)
    regions: tuple[Annotated[str, Field(pattern=REGION_PATTERN)], ...] = ()
    tiers: tuple[Tier, ...] = ()

    @model_validator(mode="after")
    def _budget_needs_points(self) -> Placement:
        if self.max_latency_ms is not None and not self.near:
            raise ValueError("max_latency_ms needs at least one point in placement.near")
        return self


class Pricing(_Strict):
    """What the developer is willing to pay."""

    max_usd_per_gpu_hour: Usd | None = None
    budget_usd: Usd | None = None


class Objective(_Strict):
    """Relative weights of the scoring terms; they need not sum to 1."""

    cost: float = Field(default=1.0, ge=0, le=1000)
    latency: float = Field(default=1.0, ge=0, le=1000)
    reliability: float = Field(default=1.0, ge=0, le=1000)

    @model_validator(mode="after")
    def _some_weight(self) -> Objective:
        if self.cost + self.latency + self.reliability <= 0:
            raise ValueError("at least one objective weight must be above 0")
        return self

    def normalized(self) -> tuple[float, float, float]:
        """(cost, latency, reliability) weights summing to 1."""
        total = self.cost + self.latency + self.reliability
        return self.cost / total, self.latency / total, self.reliability / total


class JobSpec(_Strict):
    """A job manifest: what to run, on what, where and for how much.

    ``replicas`` copies run on that many distinct nodes, placed all or none;
    ``resources`` describe one replica, all of whose GPUs share a node.
    """

    name: str = Field(pattern=NAME_PATTERN)
    command: tuple[Annotated[str, Field(min_length=1)], ...] = Field(min_length=1, max_length=256)
    resources: Resources
    placement: Placement = Placement()
    pricing: Pricing = Pricing()
    objective: Objective = Objective()
    max_duration_s: StrictInt = Field(default=DEFAULT_DURATION_S, ge=1, le=MAX_DURATION_S)
    replicas: StrictInt = Field(default=1, ge=1, le=MAX_REPLICAS)
    network: StrictBool = False  # the job may open network connections (sandboxed: none)

    def to_json_dict(self) -> dict[str, Any]:
        """The canonical, JSON-ready form (what gets signed)."""
        return self.model_dump(mode="json", exclude_defaults=False)


class NodeSpec(_Strict):
    """A provider's node as the provider describes it."""

    provider: str = Field(pattern=NAME_PATTERN)
    gpu_model: str
    gpus: int = Field(ge=1, le=1024)
    vram_gib: float | None = Field(default=None, gt=0, le=1024)
    price_usd_per_gpu_hour: Usd
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    tier: Tier
    region: str = Field(pattern=REGION_PATTERN)
    network: Network
    reliability: float = Field(default=0.99, ge=0, le=1)
    name: str | None = Field(default=None, pattern=NAME_PATTERN)

    @field_validator("gpu_model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        try:
            return canonical_name(value)
        except UnknownGpuModelError as exc:
            raise ValueError(str(exc)) from None

    @property
    def accelerator(self) -> AcceleratorKind:
        return lookup(self.gpu_model).kind

    @property
    def effective_vram_gib(self) -> float:
        """Per-GPU memory: as given, else the catalog's figure."""
        return self.vram_gib if self.vram_gib is not None else lookup(self.gpu_model).memory_gib


def search_request(
    *,
    gpu_models: Sequence[str] = (),
    gpus: int = 1,
    min_vram_gib: float | None = None,
    accelerator: str = "gpu",
    near: tuple[float, float] | None = None,
    max_latency_ms: float | None = None,
    max_price: Decimal | None = None,
    tiers: Sequence[str] = (),
    regions: Sequence[str] = (),
) -> JobSpec:
    """What a search for free capacity (``depin offers``) asks, as the JobSpec the scheduler
    would see: the same feasibility and the same score as a job."""
    placement: dict[str, Any] = {"tiers": list(tiers), "regions": list(regions)}
    if near is not None:
        placement["near"] = [{"lat": near[0], "lon": near[1]}]
    if max_latency_ms is not None:
        placement["max_latency_ms"] = max_latency_ms
    resources: dict[str, Any] = {
        "gpus": gpus,
        "accelerator": accelerator,
        "gpu_models": list(gpu_models),
    }
    if min_vram_gib is not None:
        resources["vram_gib"] = min_vram_gib
    pricing = {} if max_price is None else {"max_usd_per_gpu_hour": max_price}
    fields = {"name": "search", "command": ["-"], "resources": resources}
    try:
        return JobSpec.model_validate(fields | {"placement": placement, "pricing": pricing})
    except ValidationError as exc:
        raise InputError(f"offers: {describe_validation_error(exc)}") from None


def describe_validation_error(exc: ValidationError, *, limit: int = 3) -> str:
    """One line naming each bad field and what is wrong with it."""
    parts = [_describe_one(err) for err in exc.errors()[:limit]]
    more = len(exc.errors()) - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def _format_loc(loc: tuple[Any, ...]) -> str:
    """('placement', 'near', 0, 'lat') -> 'placement.near[0].lat'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _describe_one(err: Any) -> str:
    loc = _format_loc(err["loc"])
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        parent, _, key = loc.rpartition(".")
        where = f" under {parent!r}" if parent else ""
        return f"unknown key {key!r}{where}"
    if kind == "missing":
        return f"{loc}: required"
    got = err.get("input")
    got_text = "" if isinstance(got, dict | list) else f" (got {got!r})"
    bounds = {
        "greater_than_equal": ">= {ge}",
        "greater_than": "> {gt}",
        "less_than_equal": "<= {le}",
        "less_than": "< {lt}",
    }
    if kind in bounds:
        return f"{loc}: must be {bounds[kind].format(**ctx)}{got_text}"
    if kind == "value_error":
        return f"{loc}: {ctx.get('error', err['msg'])}" if loc else str(ctx.get("error"))
    if kind == "too_short":
        return f"{loc}: needs at least {ctx.get('min_length')} item(s)"
    if kind == "string_pattern_mismatch":
        return f"{loc}: must be lowercase letters, digits, '.', '_' or '-'{got_text}"
    if kind == "literal_error":
        return f"{loc}: must be {ctx.get('expected')}{got_text}"
    msg = err["msg"][0].lower() + err["msg"][1:]
    return f"{loc}: {msg}{got_text}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


def parse_yaml(text: str, *, source: str = "manifest") -> Any:
    """Parse YAML text, turning syntax errors into one-line ``ManifestError``s."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ManifestError(f"{source}: malformed YAML{where}: {exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source}: malformed YAML: {exc}") from exc


def job_from_data(data: Any, *, source: str = "manifest") -> JobSpec:
    """Validate already-parsed data as a JobSpec."""
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: expected a mapping with name, command and resources")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"{source}: {describe_validation_error(exc)}") from None


def read_manifest_text(path: str | Path) -> str:
    """A manifest file's text; unreadable or non-UTF-8 files are ``ManifestError``s."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text") from exc


def load_job(path: str | Path) -> JobSpec:
    """Load and validate a YAML job manifest from a file."""
    text = read_manifest_text(path)
    return job_from_data(parse_yaml(text, source=str(path)), source=str(path))
