"""The ``depin`` command: parsing, printing (rich tables or ``--json``) and exit codes.

No business logic lives here: every command calls ``depin.Client``. Errors a
person can fix print one line on stderr and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TextIO

import click
from rich.console import Console
from rich.table import Table

from depin.client import Client, load_submission
from depin.db.models import JOB_STATES
from depin.errors import DepinError, InputError
from depin.ledger import Balance
from depin.manifest import DEFAULT_TTL_S, MAX_TTL_S, Envelope
from depin.money import format_usd
from depin.spec import NETWORKS, TIERS, JobSpec, NodeSpec, describe_validation_error
from depin.tables import balances_table
from depin.views import AccountView, JobView, NodeView
from providers.catalog import CATALOG

console = Console(width=None if sys.stdout.isatty() else 160, highlight=False)


class DepinGroup(click.Group):
    """Turns DepinError into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DepinError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


def _client(ctx: click.Context) -> Client:
    root = ctx.find_root()
    if "client" not in root.meta:
        root.meta["client"] = Client()
        root.call_on_close(root.meta["client"].close)
    return root.meta["client"]


def _emit(as_json: bool, data: Any, render: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        render()


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
idempotency_option = click.option(
    "--idempotency-key",
    help="Name this request (e.g. a UUID) and reuse the name on retry: it takes effect once.",
)


# Job and node ids are 64-bit database keys: anything else is a usage error, not a lookup.
_ID = click.IntRange(1, 2**63 - 1)


def _usd(value: str) -> Decimal:
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise click.BadParameter(f"{value!r} is not an amount of USD") from None
    if not amount.is_finite() or amount <= 0:
        raise click.BadParameter("must be a positive amount of USD")
    return amount


@click.group(cls=DepinGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="depin")
def cli() -> None:
    """depin: an open marketplace and scheduler for edge GPUs.

    State lives in DEPIN_HOME (a SQLite file and keys) unless DEPIN_DATABASE_URL
    points at PostgreSQL; jobs run on a local Ray instance unless DEPIN_RAY_ADDRESS
    names a cluster.
    """


# -- init, db, gpus ----------------------------------------------------------------------------
@cli.command()
@json_option
@click.pass_context
def init(ctx: click.Context, as_json: bool) -> None:
    """Create DEPIN_HOME and the database (migrated to the latest schema)."""
    client = _client(ctx)
    client.settings.ensure_home()
    from depin.config import redact_url

    data = {
        "home": str(client.settings.home),
        "database": redact_url(client.settings.database_url),
        "market_id": client.market_id,
    }
    _emit(as_json, data, lambda: [click.echo(f"{k}: {v}") for k, v in data.items()])


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Apply the Alembic migrations up to REVISION."""
    from depin.db.engine import make_engine
    from depin.db.migrate import current_revision, upgrade

    settings = _client(ctx).settings
    if settings.is_sqlite:
        settings.ensure_home()
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine, revision)
        click.echo(f"database at revision {current_revision(engine)}")
    finally:
        engine.dispose()


@cli.command()
@json_option
def gpus(as_json: bool) -> None:
    """List the accelerator catalog and its published specs."""
    rows = [
        {
            "name": a.name,
            "kind": a.kind,
            "memory_gib": a.memory_gib,
            "fp16_tflops": a.fp16_tflops,
            "int8_tops": a.int8_tops,
            "power_w": a.power_w,
            "source": a.source,
        }
        for a in CATALOG
    ]

    def render() -> None:
        table = Table("model", "kind", "memory GiB", "FP16 TFLOPS", "INT8 TOPS", "power W")
        for r in rows:
            table.add_row(
                r["name"],
                r["kind"],
                f"{r['memory_gib']:g}",
                _num(r["fp16_tflops"]),
                _num(r["int8_tops"]),
                f"{r['power_w']:g}",
            )
        console.print(table)

    _emit(as_json, rows, render)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


# -- keys --------------------------------------------------------------------------------------
@cli.group()
def keys() -> None:
    """Ed25519 signing keys in DEPIN_HOME/keys."""


@keys.command("new")
@click.argument("name")
@json_option
@click.pass_context
def keys_new(ctx: click.Context, name: str, as_json: bool) -> None:
    """Generate a key pair NAME (the private half is written 0600)."""
    info = _client(ctx).new_key(name)
    data = {"name": info.name, "key_id": info.key_id, "public_key": info.public_key}
    _emit(
        as_json,
        data,
        lambda: click.echo(f"created key {info.name} ({info.key_id}) in {info.path.parent}"),
    )


@keys.command("list")
@click.option("--account", help="Show the keys registered to this account, with their state.")
@json_option
@click.pass_context
def keys_list(ctx: click.Context, account: str | None, as_json: bool) -> None:
    """List local keys, or an account's registered keys."""
    client = _client(ctx)
    if account is not None:
        views = client.registered_keys(account)

        def render_registered() -> None:
            table = Table("key id", "state", "created", "expires", "revoked")
            for k in views:
                table.add_row(
                    k.key_id, k.state, k.created_at or "-", k.not_after or "-", k.revoked_at or "-"
                )
            console.print(table)

        _emit(as_json, [k.to_dict() for k in views], render_registered)
        return
    infos = client.local_keys()
    data = [{"name": k.name, "key_id": k.key_id, "public_key": k.public_key} for k in infos]

    def render() -> None:
        table = Table("name", "key id", "public key")
        for k in infos:
            table.add_row(k.name, k.key_id, k.public_key)
        console.print(table)

    _emit(as_json, data, render)


@keys.command("rotate")
@click.argument("account")
@click.option("--revoke-old", is_flag=True, help="Revoke the account's other keys at once.")
@click.option("--expires-in-days", type=click.IntRange(1, 3650), help="The new key's validity.")
@json_option
@click.pass_context
def keys_rotate(
    ctx: click.Context, account: str, revoke_old: bool, expires_in_days: int | None, as_json: bool
) -> None:
    """Make and register a new key for ACCOUNT; prints its key id."""
    info, revoked = _client(ctx).rotate_key(
        account, revoke_old=revoke_old, expires_in_days=expires_in_days
    )
    data = {"name": info.name, "key_id": info.key_id, "revoked": [k.key_id for k in revoked]}

    def render() -> None:
        click.echo(info.key_id)
        click.echo(f"new key {info.name} registered to {account}", err=True)
        for k in revoked:
            click.echo(f"revoked {k.key_id}", err=True)
        if not revoke_old:
            click.echo("old keys stay valid until `depin keys revoke KEY`", err=True)

    _emit(as_json, data, render)


@keys.command("revoke")
@click.argument("key")
@json_option
@click.pass_context
def keys_revoke(ctx: click.Context, key: str, as_json: bool) -> None:
    """Revoke KEY (a key id, or a local key's name): nothing it signs is accepted any more."""
    view = _client(ctx).revoke_key(key)
    _emit(
        as_json, view.to_dict(), lambda: click.echo(f"revoked key {view.key_id} of {view.account}")
    )


# -- accounts and providers --------------------------------------------------------------------
@cli.group()
def account() -> None:
    """Developer accounts and their money."""


@account.command("create")
@click.argument("name")
@click.option("--key", required=True, help="Key name, .pub file or base64 public key.")
@idempotency_option
@json_option
@click.pass_context
def account_create(
    ctx: click.Context, name: str, key: str, idempotency_key: str | None, as_json: bool
) -> None:
    """Open a developer account NAME that KEY signs for; prints its id."""
    client = _client(ctx)
    _emit_account(as_json, client.create_account(name, key=key, idempotency_key=idempotency_key))


@account.command("deposit")
@click.argument("name")
@click.argument("usd", type=_usd)
@idempotency_option
@json_option
@click.pass_context
def account_deposit(
    ctx: click.Context, name: str, usd: Decimal, idempotency_key: str | None, as_json: bool
) -> None:
    """Pay USD into account NAME."""
    balance = _client(ctx).deposit(name, usd, idempotency_key=idempotency_key)
    _emit(as_json, _balance_dict(balance), lambda: _print_balances([balance]))


@account.command("balance")
@click.argument("name")
@json_option
@click.pass_context
def account_balance(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show what account NAME has available, holds in escrow and has spent."""
    balance = _client(ctx).account(name).balance
    _emit(as_json, _balance_dict(balance), lambda: _print_balances([balance]))


@cli.group()
def provider() -> None:
    """Providers: the accounts that own nodes and get paid."""


@provider.command("register")
@click.argument("name")
@click.option("--key", required=True, help="Key name, .pub file or base64 public key.")
@idempotency_option
@json_option
@click.pass_context
def provider_register(
    ctx: click.Context, name: str, key: str, idempotency_key: str | None, as_json: bool
) -> None:
    """Register provider NAME that KEY signs for; prints its id."""
    client = _client(ctx)
    _emit_account(as_json, client.register_provider(name, key=key, idempotency_key=idempotency_key))


def _emit_account(as_json: bool, view: AccountView) -> None:
    """A new account: its id alone, or id, name and key ids as JSON."""
    _emit(
        as_json,
        {"id": view.id, "name": view.name, "key_ids": view.key_ids},
        lambda: click.echo(view.id),
    )


def _balance_dict(b: Balance) -> dict[str, Any]:
    return {
        "account": b.account,
        "kind": b.kind,
        "available_micro_usd": b.available,
        "held_micro_usd": b.debits_pending,
        "spent_micro_usd": b.debits_posted,
        "received_micro_usd": b.credits_posted,
    }


def _print_balances(items: list[Balance]) -> None:
    console.print(balances_table(items))


# -- nodes -------------------------------------------------------------------------------------
@cli.group()
def node() -> None:
    """Provider nodes."""


@node.command("add")
@click.option("--provider", required=True, help="Provider account that owns the node.")
@click.option("--gpu", "gpu_model", required=True, help="GPU model from `depin gpus`.")
@click.option("--gpus", type=click.IntRange(1, 1024), required=True, help="Number of GPUs.")
@click.option("--price-usd-per-gpu-hour", type=_usd, required=True)
@click.option("--lat", type=click.FloatRange(-90, 90), required=True)
@click.option("--lon", type=click.FloatRange(-180, 180), required=True)
@click.option("--tier", type=click.Choice(TIERS), required=True)
@click.option("--region", required=True, help="e.g. eu-central, us-east.")
@click.option("--network", type=click.Choice(NETWORKS), required=True)
@click.option(
    "--vram-gib",
    type=click.FloatRange(min=0, min_open=True),
    help="Per GPU; default from the catalog.",
)
@click.option("--reliability", type=click.FloatRange(0, 1), default=0.99, show_default=True)
@click.option("--name", help="A name unique among the provider's nodes.")
@idempotency_option
@json_option
@click.pass_context
def node_add(ctx: click.Context, as_json: bool, idempotency_key: str | None, **fields: Any) -> None:
    """Register a node; prints its id."""
    from pydantic import ValidationError

    try:
        spec = NodeSpec.model_validate(fields)
    except ValidationError as exc:
        raise InputError(f"node: {describe_validation_error(exc)}") from None
    view = _client(ctx).add_node(spec, idempotency_key=idempotency_key)
    _emit(as_json, view.to_dict() | {"id": view.id}, lambda: click.echo(view.id))


@node.command("list")
@json_option
@click.pass_context
def node_list(ctx: click.Context, as_json: bool) -> None:
    """List registered nodes and their free GPUs."""
    views = _client(ctx).nodes()
    _emit(as_json, [v.to_dict() for v in views], lambda: _print_nodes(views))


def _print_nodes(views: list[NodeView]) -> None:
    from providers.fleet import nearest_city

    table = Table(
        "id",
        "provider",
        "gpu",
        "free/gpus",
        "vram GiB",
        "$/GPU-h",
        "near",
        "tier",
        "region",
        "net",
        "status",
    )
    for v in views:
        table.add_row(
            str(v.id),
            v.provider,
            v.gpu_model,
            f"{v.gpus_free}/{v.gpus}",
            f"{v.vram_gib:g}",
            f"{v.price_usd_per_gpu_hour:.2f}",
            nearest_city(v.lat, v.lon),
            v.tier,
            v.region,
            v.network,
            v.status,
        )
    console.print(table)


@cli.command()
@click.option("--gpu", "gpu_models", multiple=True, help="GPU model (repeat for several).")
@click.option(
    "--gpus", type=click.IntRange(1, 64), default=1, show_default=True, help="GPUs on one node."
)
@click.option("--min-vram-gib", type=click.FloatRange(min=0), help="Per GPU.")
@click.option(
    "--accelerator", type=click.Choice(["gpu", "tpu", "npu"]), default="gpu", show_default=True
)
@click.option("--near", "near", help="Where the users are: LAT,LON.")
@click.option(
    "--max-latency-ms", type=click.FloatRange(min=0, min_open=True), help="RTT from --near."
)
@click.option("--max-price", type=_usd, help="USD per GPU-hour.")
@click.option(
    "--tier", "tiers", multiple=True, type=click.Choice(TIERS), help="Repeat for several."
)
@click.option("--region", "regions", multiple=True, help="e.g. eu (any eu-*), us-east; repeatable.")
@click.option(
    "--sort", type=click.Choice(["price", "latency", "score"]), default="price", show_default=True
)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@json_option
@click.pass_context
def offers(ctx: click.Context, as_json: bool, sort: str, limit: int, **query: Any) -> None:
    """Search free capacity, like `vastai search offers`."""
    request = _search_request(query)
    hits = _client(ctx).search(request, sort=sort, limit=limit)
    rows = [
        {
            "node_id": h.offer.node_id,
            "gpu_model": h.offer.gpu_model,
            "gpus_free": h.gpus_free,
            "vram_gib": h.offer.vram_gib,
            "price_usd_per_gpu_hour": h.offer.price_usd_per_gpu_hour,
            "rtt_ms": None if h.rtt_ms is None else round(h.rtt_ms, 2),
            "score": round(h.score, 2),
            "tier": h.offer.tier,
            "region": h.offer.region,
            "network": h.offer.network,
            "lat": h.offer.lat,
            "lon": h.offer.lon,
            "reliability": h.offer.reliability,
        }
        for h in hits
    ]

    def render() -> None:
        from providers.fleet import nearest_city

        table = Table(
            "node",
            "gpu",
            "free",
            "vram GiB",
            "$/GPU-h",
            "rtt ms",
            "score",
            "near",
            "tier",
            "region",
            "net",
        )
        for r in rows:
            table.add_row(
                str(r["node_id"]),
                r["gpu_model"],
                str(r["gpus_free"]),
                f"{r['vram_gib']:g}",
                f"{r['price_usd_per_gpu_hour']:.2f}",
                "-" if r["rtt_ms"] is None else f"{r['rtt_ms']:.1f}",
                f"{r['score']:.1f}",
                nearest_city(r["lat"], r["lon"]),
                r["tier"],
                r["region"],
                r["network"],
            )
        console.print(table)
        if not rows:
            click.echo("no free capacity matches; loosen a constraint", err=True)

    _emit(as_json, rows, render)


def _search_request(query: dict[str, Any]) -> JobSpec:
    """The search flags as the JobSpec the scheduler would see."""
    from pydantic import ValidationError

    placement: dict[str, Any] = {"tiers": list(query["tiers"]), "regions": list(query["regions"])}
    if query["near"] is not None:
        try:
            lat, lon = (float(x) for x in query["near"].split(","))
        except ValueError:
            raise click.BadParameter(
                "expected LAT,LON, e.g. 52.52,13.40", param_hint="--near"
            ) from None
        placement["near"] = [{"lat": lat, "lon": lon}]
    if query["max_latency_ms"] is not None:
        placement["max_latency_ms"] = query["max_latency_ms"]
    resources: dict[str, Any] = {
        "gpus": query["gpus"],
        "accelerator": query["accelerator"],
        "gpu_models": list(query["gpu_models"]),
    }
    if query["min_vram_gib"] is not None:
        resources["vram_gib"] = query["min_vram_gib"]
    pricing = {} if query["max_price"] is None else {"max_usd_per_gpu_hour": query["max_price"]}
    try:
        return JobSpec.model_validate(
            {
                "name": "search",
                "command": ["-"],
                "resources": resources,
                "placement": placement,
                "pricing": pricing,
            }
        )
    except ValidationError as exc:
        raise InputError(f"offers: {describe_validation_error(exc)}") from None


# -- jobs --------------------------------------------------------------------------------------
@cli.group()
def job() -> None:
    """Submit and watch jobs."""


@job.command("submit")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--as", "account", help="Account that pays (signs with its local key).")
@click.option(
    "--wait", is_flag=True, help="Wait for the job to end (runs it if no scheduler is running)."
)
@click.option("--timeout-s", type=click.IntRange(min=1), help="Give up waiting after this long.")
@idempotency_option
@json_option
@click.pass_context
def job_submit(
    ctx: click.Context,
    file: Path,
    account: str | None,
    wait: bool,
    timeout_s: int | None,
    idempotency_key: str | None,
    as_json: bool,
) -> None:
    """Sign (if FILE is YAML) and submit a job; prints its id."""
    if timeout_s is not None and not wait:
        raise InputError("--timeout-s limits --wait: add --wait, or drop --timeout-s")
    client = _client(ctx)
    view = client.submit(load_submission(file), account=account, idempotency_key=idempotency_key)
    if not wait:
        _emit(as_json, {"id": view.id, "state": view.state}, lambda: click.echo(view.id))
        return
    click.echo(f"submitted job {view.id} ({view.name}); waiting", err=True)
    view = client.wait(view.id, timeout_s=timeout_s)
    _emit(as_json, view.to_dict(), lambda: _print_job(view))
    if view.state != "succeeded":
        raise DepinError(_ending(view))


def _ending(view: JobView) -> str:
    if not view.terminal:
        return f"job {view.id} is still {view.state} after the timeout"
    alloc = view.allocation
    detail = "; ".join(view.reasons)
    if alloc is not None and view.state == "failed":
        detail = alloc.error or f"exit code {alloc.exit_code}"
    return f"job {view.id} {view.state}: {detail}"


@job.command("place")
@click.argument("job_id", type=_ID)
@click.option("--node", "node_id", type=_ID, required=True, help="The node to reserve it on.")
@idempotency_option
@json_option
@click.pass_context
def job_place(
    ctx: click.Context, job_id: int, node_id: int, idempotency_key: str | None, as_json: bool
) -> None:
    """Reserve pending job JOB_ID on node --node by hand (a scheduler then launches it)."""
    allocs = _client(ctx).place(job_id, node_id, idempotency_key=idempotency_key)
    _emit(as_json, {"allocations": allocs}, lambda: click.echo(" ".join(map(str, allocs))))


@job.command("list")
@click.option("--state", type=click.Choice(JOB_STATES), help="Only jobs in this state.")
@click.option("--account", help="Only this account's jobs.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@json_option
@click.pass_context
def job_list(
    ctx: click.Context, state: str | None, account: str | None, limit: int, as_json: bool
) -> None:
    """List jobs, newest first."""
    views = _client(ctx).jobs(account=account, state=state, limit=limit)

    def render() -> None:
        table = Table("id", "name", "account", "state", "node", "rtt ms", "$/GPU-h", "cost", "exit")
        for v in views:
            a = v.allocation
            table.add_row(
                str(v.id),
                v.name,
                v.account,
                v.state,
                str(a.node_id) if a else "-",
                f"{a.rtt_ms:.1f}" if a and a.rtt_ms is not None else "-",
                f"{a.price_usd_per_gpu_hour:.2f}" if a else "-",
                format_usd(a.cost_micro_usd) if a and a.cost_micro_usd is not None else "-",
                str(a.exit_code) if a and a.exit_code is not None else "-",
            )
        console.print(table)

    _emit(as_json, [v.to_dict() for v in views], render)


@job.command("status")
@click.argument("job_id", type=_ID)
@json_option
@click.pass_context
def job_status(ctx: click.Context, job_id: int, as_json: bool) -> None:
    """Show one job: state, placement, cost and the tail of its output."""
    view = _client(ctx).job(job_id)
    _emit(as_json, view.to_dict(), lambda: _print_job(view))


def _print_job(v: JobView) -> None:
    console.print(
        f"[bold]job {v.id}[/bold] {v.name}  state: [bold]{v.state}[/bold]  account: {v.account}"
    )
    console.print(f"  manifest {v.manifest_digest}  signed by key {v.key_id}")
    console.print(f"  most it can cost: {format_usd(v.max_cost_micro_usd)}")
    for a in v.allocations:
        rtt = f"{a.rtt_ms:.1f} ms" if a.rtt_ms is not None else "-"
        console.print(
            f"  allocation {a.id}: node {a.node_id}, {a.gpus} GPU(s) at "
            f"${a.price_usd_per_gpu_hour:.2f}/GPU-h, "
            f"rtt {rtt}, {a.state}"
            + (f", exit {a.exit_code}" if a.exit_code is not None else "")
            + (f", cost {format_usd(a.cost_micro_usd)}" if a.cost_micro_usd is not None else "")
        )
        if a.error:
            console.print(f"    error: {a.error}")
        if a.output_tail:
            console.print("    output (tail):")
            for line in a.output_tail.rstrip().splitlines()[-10:]:
                console.print(f"      {line}", markup=False)
    for reason in v.reasons:
        console.print(f"  reason: {reason}", markup=False)


@job.command("explain")
@click.argument("job_id", type=_ID)
@json_option
@click.pass_context
def job_explain(ctx: click.Context, job_id: int, as_json: bool) -> None:
    """Why the job went where it went, or nowhere."""
    data = _client(ctx).explain(job_id)

    def render() -> None:
        m = data["metric"]
        nodes = data["node_ids"]
        where = (
            f"node{'s' if len(nodes) > 1 else ''} {', '.join(map(str, nodes))}"
            if nodes
            else "no node"
        )
        console.print(
            f"[bold]job {data['job']}[/bold] {data['name']}: {data['state']}, {where} "
            f"({data['source']})"
        )
        console.print(
            f"  nodes evaluated: {m['nodes_evaluated']}, feasible: {m['feasible']}, "
            f"busy: {m['exhausted']}"
        )
        for label, count in sorted(m["filtered"].items(), key=lambda kv: -kv[1]):
            console.print(f"  filtered by {label}: {count} node(s)", markup=False)
        if m["candidates"]:
            table = Table("node", "total", "cost", "latency", "reliability", "rtt ms", "$/GPU-h")
            for c in m["candidates"]:
                s = c["scores"]
                table.add_row(
                    str(c["node_id"]),
                    f"{c['total']:.1f}",
                    f"{s['cost']:.1f}",
                    f"{s['latency']:.1f}",
                    f"{s['reliability']:.1f}",
                    "-" if c["rtt_ms"] is None else f"{c['rtt_ms']:.1f}",
                    f"{c['price_usd_per_gpu_hour']:.2f}",
                )
            console.print(table)
        for reason in data["reasons"]:
            console.print(f"  reason: {reason}", markup=False)
        for suggestion in m.get("suggestions", []):
            if suggestion not in data["reasons"]:
                console.print(f"  suggestion: {suggestion}", markup=False)

    _emit(as_json, data, render)


# -- manifests ---------------------------------------------------------------------------------
@cli.group()
def manifest() -> None:
    """Sign and verify job manifests offline."""


@manifest.command("sign")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", required=True, help="Local key to sign with.")
@click.option(
    "-o", "--output", "out", required=True, type=click.Path(dir_okay=False, path_type=Path)
)
@click.option("--as", "account", help="Issuing account (default: the key's account).")
@click.option("--audience", help="Marketplace id (default: this marketplace's).")
@click.option(
    "--ttl-s", type=click.IntRange(1, MAX_TTL_S), default=DEFAULT_TTL_S, show_default=True
)
@click.pass_context
def manifest_sign(
    ctx: click.Context,
    file: Path,
    key: str,
    out: Path,
    account: str | None,
    audience: str | None,
    ttl_s: int,
) -> None:
    """Sign the YAML manifest FILE into a DSSE envelope OUT."""
    spec = load_submission(file)
    if isinstance(spec, Envelope):
        raise InputError(f"{file} is already a signed envelope")
    envelope = _client(ctx).sign(spec, key=key, account=account, audience=audience, ttl_s=ttl_s)
    with _writing(out) as stream:
        stream.write(envelope.to_json())
    click.echo(f"signed {file} -> {out} ({envelope.digest})", err=True)


@manifest.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@click.pass_context
def manifest_verify(ctx: click.Context, file: Path, as_json: bool) -> None:
    """Check an envelope's signature; print signer, key, claims and digest."""
    envelope = Envelope.from_json(file.read_bytes())
    key_id, claims = _client(ctx).verify_envelope(envelope)
    now = datetime.now(UTC)
    data = {
        "valid": True,
        "expired": claims.expires_at < now,
        "signer": claims.issuer,
        "key_id": key_id,
        "digest": envelope.digest,
        "payload_type": envelope.payload_type,
        "audience": claims.audience,
        "nonce": claims.nonce,
        "issued_at": claims.issued_at.isoformat(),
        "expires_at": claims.expires_at.isoformat(),
        "job": claims.job.to_json_dict(),
    }

    def render() -> None:
        click.echo("signature: ok" + (" (the envelope has expired)" if data["expired"] else ""))
        for k in ("signer", "key_id", "digest", "audience", "nonce", "issued_at", "expires_at"):
            click.echo(f"{k}: {data[k]}")
        click.echo(f"job: {claims.job.name} ({' '.join(claims.job.command)})")

    _emit(as_json, data, render)


# -- scheduler ---------------------------------------------------------------------------------
@cli.group()
def scheduler() -> None:
    """Run the scheduler: plan, reserve, launch on Ray, settle."""


@scheduler.command("run")
@click.option("--once", is_flag=True, help="One cycle; wait for what it launched, then exit.")
@click.option(
    "--no-launch",
    is_flag=True,
    help="Reserve capacity and money only; leave allocations reserved for a launcher.",
)
@json_option
@click.pass_context
def scheduler_run(ctx: click.Context, once: bool, no_launch: bool, as_json: bool) -> None:
    """Schedule pending jobs until interrupted (a long-lived Ray driver)."""
    from scheduler.loop import Driver

    market = _client(ctx).market
    requeued = market.reconcile()
    if requeued:
        click.echo(f"requeued {len(requeued)} allocation(s) of stopped drivers", err=True)
    driver = Driver(market, kind="scheduler", launch=not no_launch)
    summary = {"placed": 0, "unschedulable": 0, "conflicts": 0, "succeeded": 0, "failed": 0}
    try:
        if once:
            _log_cycle(driver.cycle(), summary, as_json)
            while driver.executor.running:
                _log_cycle(_settle_only(driver), summary, as_json)
        else:
            click.echo(f"scheduler {driver.driver_id} running; Ctrl-C to stop", err=True)
            while True:
                _log_cycle(driver.cycle(wait_s=0.5), summary, as_json)
    except KeyboardInterrupt:
        click.echo("stopping: running allocations are requeued", err=True)
    finally:
        driver.stop()
    if as_json:
        click.echo(json.dumps(summary))


def _settle_only(driver: Any) -> Any:
    from scheduler.loop import CycleReport

    report = CycleReport()
    for outcome in driver.executor.poll(timeout_s=0.5):
        driver.market.finish(outcome)
        report.finished.append(outcome)
    return report


def _log_cycle(report: Any, summary: dict[str, int], as_json: bool) -> None:
    summary["placed"] += len(report.commit.reserved)
    summary["unschedulable"] += len(report.commit.unschedulable)
    summary["conflicts"] += report.commit.conflicts
    for outcome in report.finished:
        summary["succeeded" if outcome.succeeded else "failed"] += 1
    if as_json:
        return
    if report.commit.reserved:
        click.echo(f"reserved {len(report.commit.reserved)} allocation(s)", err=True)
    for job_id in report.commit.unschedulable:
        click.echo(f"job {job_id}: unschedulable", err=True)
    for outcome in report.finished:
        state = "succeeded" if outcome.succeeded else ("lost" if outcome.lost else "failed")
        click.echo(f"allocation {outcome.allocation_id}: {state}", err=True)


# -- ledger ------------------------------------------------------------------------------------
@cli.group()
def ledger() -> None:
    """The money: balances, entries and the hash chain."""


@ledger.command("show")
@click.option("--account", help="Only this account.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@json_option
@click.pass_context
def ledger_show(ctx: click.Context, account: str | None, limit: int, as_json: bool) -> None:
    """Balances and the ledger's entries."""
    client = _client(ctx)
    balances = client.balances(account)
    rows = client.ledger_entries(account=account, limit=limit)

    def render() -> None:
        _print_balances(balances)
        table = Table("#", "kind", "debit", "credit", "amount", "pending", "job", "memo")
        for r in rows:
            table.add_row(
                str(r["id"]),
                r["kind"],
                r["debit"],
                r["credit"],
                format_usd(r["amount_micro_usd"]),
                "yes" if r["pending"] else "",
                str(r["job_id"] or ""),
                r["memo"],
            )
        console.print(table)

    _emit(as_json, {"balances": [_balance_dict(b) for b in balances], "entries": rows}, render)


@contextmanager
def _writing(path: Path | None) -> Iterator[TextIO]:
    """``path`` open for writing (stdout when None), written whole or not at all: the output
    goes to a file beside it that replaces it only when the command succeeds, so a failed
    export leaves an earlier one as it was. A failure to write (no such directory, a full
    disk) is one line naming the file."""
    if path is None:
        yield sys.stdout
        return
    partial = path.with_name(f".{path.name}.partial")
    try:
        try:
            with partial.open("w", encoding="utf-8") as stream:
                yield stream
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from exc


@ledger.command("export")
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Default: stdout.",
)
@click.pass_context
def ledger_export(ctx: click.Context, out: Path | None) -> None:
    """Write every ledger entry as JSON lines, with its hash chain, for an outside audit."""
    count = 0
    with _writing(out) as stream:
        for entry in _client(ctx).export_ledger():
            stream.write(json.dumps(entry, sort_keys=True) + "\n")
            count += 1
    if out:
        click.echo(f"wrote {count} entries to {out}", err=True)


@ledger.command("verify")
@json_option
@click.pass_context
def ledger_verify(ctx: click.Context, as_json: bool) -> None:
    """Recompute the hash chain and every balance; exit 1 on the first break."""
    report = _client(ctx).verify_ledger()

    def render() -> None:
        if report.ok:
            click.echo(
                f"ledger ok: {report.entries} entries, {report.accounts} accounts, debits = credits"
            )

    _emit(as_json, report.to_dict(), render)
    if not report.ok:
        where = f" at entry #{report.first_bad_position}" if report.first_bad_position else ""
        raise DepinError(f"ledger verify failed{where}: {report.problems[0]}")


# -- benchmarks ------------------------------------------------------------------------------
@cli.group()
def bench() -> None:
    """Measure: every performance target has a command here (--json for machines)."""


@bench.command("scheduler")
@click.option("--nodes", type=click.IntRange(10, 1_000_000), default=10_000, show_default=True)
@click.option("--jobs", type=click.IntRange(1, 200_000), default=20_000, show_default=True)
@click.option(
    "--big-nodes",
    type=click.IntRange(10, 1_000_000),
    default=100_000,
    show_default=True,
    help="Fleet size for the second single-job latency figure.",
)
@click.option("--classad-jobs", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--db", "database_url", help="Database for the batch figure (default: a fresh SQLite file)."
)
@json_option
def bench_scheduler(as_json: bool, **options: Any) -> None:
    """Decision latency, batch placements/s with the ledger commit, quality, ClassAds."""
    from depin.bench.scheduler import run

    say = None if as_json else (lambda msg: click.echo(f"... {msg}", err=True))
    data = run(progress=say, **options)
    _emit(as_json, data, lambda: _print_scheduler_bench(data))


def _print_scheduler_bench(data: dict[str, Any]) -> None:
    table = Table(
        "nodes",
        "classes",
        "cells",
        "decisions",
        "p50 ms",
        "p99 ms",
        "max ms",
        title="single-job decisions",
    )
    for r in data["single_job"]:
        table.add_row(
            *(
                str(r[k])
                for k in ("nodes", "classes", "cells", "decisions", "p50_ms", "p99_ms", "max_ms")
            )
        )
    console.print(table)
    b = data["batch"]
    console.print(
        f"batch: {b['placed']} of {b['jobs']} jobs placed on {b['nodes']} nodes "
        f"({b['mode']}, {b['database']}): "
        f"read {b['read_s']} s, plan {b['plan_s']} s, commit {b['commit_s']} s -> "
        f"[bold]{b['placements_per_s']}[/bold] placements/s with the commit "
        f"({b['placements_per_s_with_read']}/s with the read); ledger ok: {b['ledger_ok']}"
    )
    for key in ("quality", "quality_single_gpu"):
        q = data[key]
        which = "single-GPU jobs" if q["single_gpu"] else "the same batch"
        title = f"quality, cost-only objective ({which})"
        table = Table("strategy", "placed", "vs exact", "USD/h", "cost gap %", "s", title=title)
        for name, r in q["strategies"].items():
            table.add_row(
                name,
                str(r["placed"]),
                f"{r['placed_vs_exact']:+d}",
                f"{r['cost_usd_per_hour']:.2f}",
                f"{r['cost_gap_pct']:+.2f}",
                f"{r['seconds']:.2f}",
            )
        console.print(table)
    c = data["classads"]
    if "skipped" in c:
        console.print(f"classads: skipped: {c['skipped']}")
    else:
        console.print(
            f"feasibility, {c['jobs']} jobs x {c['nodes']} nodes: "
            f"depin {c['depin_pairs_per_s']:,} pairs/s, "
            f"ClassAds {c['classad_pairs_per_s']:,} pairs/s -> [bold]{c['speedup']}x[/bold] "
            f"(same feasible sets: {c['same_feasible_sets']})"
        )


@bench.command("manifest")
@click.option("--envelopes", type=click.IntRange(10, 1_000_000), default=5000, show_default=True)
@click.option(
    "--db", "database_url", help="Database for the nonce check (default: a fresh SQLite file)."
)
@json_option
def bench_manifest(as_json: bool, envelopes: int, database_url: str | None) -> None:
    """Envelopes verified per second (signature, claims, nonce) against raw Ed25519."""
    from depin.bench.manifest import run

    data = run(envelopes=envelopes, database_url=database_url)
    _emit(
        as_json,
        data,
        lambda: console.print(
            f"{data['envelopes']} envelopes ({data['payload_bytes_mean']} B payloads, nonces in "
            f"{data['database']}): [bold]{data['envelopes_per_s']:,}/s[/bold] verified in full, "
            f"{data['raw_ed25519_per_s']:,}/s raw Ed25519 -> {data['ratio']:.0%} of raw"
        ),
    )


@bench.command("ledger")
@click.option(
    "--allocations", type=click.IntRange(100, 1_000_000), default=20_000, show_default=True
)
@click.option(
    "--cycle",
    type=click.IntRange(1, 100_000),
    default=5_000,
    show_default=True,
    help="Allocations committed per transaction.",
)
@click.option("--db", "database_url", help="Database (default: a fresh SQLite file).")
@json_option
def bench_ledger(as_json: bool, allocations: int, cycle: int, database_url: str | None) -> None:
    """Allocations committed per second, a cycle per transaction, against one per transaction."""
    from depin.bench.ledger import run

    data = run(allocations=allocations, cycle=cycle, database_url=database_url)
    _emit(
        as_json,
        data,
        lambda: console.print(
            f"{data['allocations']:,} allocations on {data['database']}, "
            f"{data['cycle']:,} per transaction: "
            f"[bold]{data['allocations_per_s']:,}/s[/bold] committed; one per transaction "
            f"{data['one_per_transaction_per_s']:,}/s ({data['speedup']}x); "
            f"ledger ok: {data['ledger_ok']}"
        ),
    )


# -- demo --------------------------------------------------------------------------------------
@cli.command()
@click.option("--keep", is_flag=True, help="Keep the demo's DEPIN_HOME instead of deleting it.")
def demo(keep: bool) -> None:
    """Run the main job end to end on the embedded default (SQLite + local Ray)."""
    from depin.demo import run_demo

    run_demo(console, keep=keep)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: unexpected errors print one line unless DEPIN_DEBUG is set."""
    try:
        cli.main(args=argv, prog_name="depin")
    except Exception as exc:
        if os.environ.get("DEPIN_DEBUG"):
            raise
        click.echo(
            f"internal error: {type(exc).__name__}: {exc} (set DEPIN_DEBUG=1 for a traceback)",
            err=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
