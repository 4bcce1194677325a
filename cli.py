"""The ``depin`` command: parsing, calls to ``depin.Client``, and exit codes.

No business logic lives here and no command reaches past ``Client`` into the
market; printing is ``depin.render``'s. Errors a person can fix print one
line on stderr and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import click

from depin import render
from depin.api.cli import serve
from depin.bench.cli import bench
from depin.client import Client, load_submission
from depin.errors import DepinError, InputError
from depin.ledger import Balance
from depin.manifest import DEFAULT_TTL_S, MAX_TTL_S, Envelope
from depin.render import console, emit
from depin.spec import NETWORKS, TIERS, search_request
from depin.states import JobState
from depin.study.cli import study
from depin.views import AccountView
from providers.agent.cli import agent
from providers.catalog import CATALOG


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
        root.meta["client"] = Client(url=root.params.get("api"))
        root.call_on_close(root.meta["client"].close)
    return root.meta["client"]


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
@click.option("--api", envvar="DEPIN_API_URL", help="A market served over HTTP (`depin serve`).")
def cli(api: str | None) -> None:
    """depin: an open marketplace and scheduler for edge GPUs.

    State lives in DEPIN_HOME (a SQLite file and keys) unless DEPIN_DATABASE_URL
    points at PostgreSQL; jobs run on a local Ray instance unless DEPIN_RAY_ADDRESS
    names a cluster. With --api (or DEPIN_API_URL) every command but serve, db,
    bench and demo talks to that market instead; keys stay in DEPIN_HOME.
    """


cli.add_command(bench)
cli.add_command(serve)
cli.add_command(agent)
cli.add_command(study)


# -- init, db, gpus ----------------------------------------------------------------------------
@cli.command()
@json_option
@click.pass_context
def init(ctx: click.Context, as_json: bool) -> None:
    """Create DEPIN_HOME and the database (migrated), and the operator's key that signs
    deposits; against an API, only DEPIN_HOME, and print the market's id."""
    data = _client(ctx).init()
    emit(as_json, data, lambda: [click.echo(f"{k}: {v}") for k, v in data.items()])


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Apply the Alembic migrations up to REVISION."""
    click.echo(f"database at revision {_client(ctx).upgrade_database(revision)}")


@cli.command()
@json_option
def gpus(as_json: bool) -> None:
    """List the accelerator catalog and its published specs."""
    fields = ("name", "kind", "memory_gib", "fp16_tflops", "int8_tops", "power_w", "source")
    rows = [{f: getattr(a, f) for f in fields} for a in CATALOG]
    emit(as_json, rows, lambda: render.gpus(console, rows))


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
    say = f"created key {info.name} ({info.key_id}) in {info.path.parent}"
    emit(as_json, data, lambda: click.echo(say))


@keys.command("list")
@click.option("--account", help="Show the keys registered to this account, with their state.")
@json_option
@click.pass_context
def keys_list(ctx: click.Context, account: str | None, as_json: bool) -> None:
    """List local keys, or an account's registered keys."""
    client = _client(ctx)
    if account is not None:
        views = client.registered_keys(account)
        emit(as_json, [k.to_dict() for k in views], lambda: render.registered_keys(console, views))
        return
    rows = [
        {"name": k.name, "key_id": k.key_id, "public_key": k.public_key}
        for k in client.local_keys()
    ]
    emit(as_json, rows, lambda: render.local_keys(console, rows))


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

    def say() -> None:
        click.echo(info.key_id)
        click.echo(f"new key {info.name} registered to {account}", err=True)
        for k in revoked:
            click.echo(f"revoked {k.key_id}", err=True)
        if not revoke_old:
            click.echo("old keys stay valid until `depin keys revoke KEY`", err=True)

    emit(as_json, data, say)


@keys.command("revoke")
@click.argument("key")
@json_option
@click.pass_context
def keys_revoke(ctx: click.Context, key: str, as_json: bool) -> None:
    """Revoke KEY (a key id, or a local key's name): nothing it signs is accepted any more."""
    view = _client(ctx).revoke_key(key)
    say = f"revoked key {view.key_id} of {view.account}"
    emit(as_json, view.to_dict(), lambda: click.echo(say))


# -- accounts and providers --------------------------------------------------------------------
@cli.group()
def account() -> None:
    """Developer accounts and their money."""


key_option = click.option("--key", required=True, help="Key name, .pub file or base64 public key.")


@account.command("create")
@click.argument("name")
@key_option
@idempotency_option
@json_option
@click.pass_context
def account_create(
    ctx: click.Context, name: str, key: str, idempotency_key: str | None, as_json: bool
) -> None:
    """Open a developer account NAME that KEY signs for; prints its id."""
    _emit_account(
        as_json, _client(ctx).create_account(name, key=key, idempotency_key=idempotency_key)
    )


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
    _emit_balance(as_json, balance)


@account.command("balance")
@click.argument("name")
@json_option
@click.pass_context
def account_balance(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show what account NAME has available, holds in escrow and has spent."""
    balance = _client(ctx).account(name).balance
    _emit_balance(as_json, balance)


def _emit_balance(as_json: bool, balance: Balance) -> None:
    data = render.balance_dict(balance)
    emit(as_json, data, lambda: console.print(render.balances_table([balance])))


@cli.group()
def provider() -> None:
    """Providers: the accounts that own nodes and get paid."""


@provider.command("register")
@click.argument("name")
@key_option
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
    data = {"id": view.id, "name": view.name, "key_ids": view.key_ids}
    emit(as_json, data, lambda: click.echo(view.id))


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
    view = _client(ctx).add_node(idempotency_key=idempotency_key, **fields)
    emit(as_json, view.to_dict() | {"id": view.id}, lambda: click.echo(view.id))


@node.command("list")
@json_option
@click.pass_context
def node_list(ctx: click.Context, as_json: bool) -> None:
    """List registered nodes and their free GPUs."""
    views = _client(ctx).nodes()
    emit(as_json, [v.to_dict() for v in views], lambda: render.nodes(console, views))


@node.command("allocations")
@click.argument("node_id", type=_ID)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@json_option
@click.pass_context
def node_allocations(ctx: click.Context, node_id: int, limit: int, as_json: bool) -> None:
    """The allocations on a node, newest first (its provider's view)."""
    views = _client(ctx).allocations(node_id, limit=limit)
    emit(as_json, [v.to_dict() for v in views], lambda: render.allocations(console, views))


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
    request = search_request(**(query | {"near": _latlon(query["near"])}))
    hits = _client(ctx).search(request, sort=sort, limit=limit)
    rows = [render.hit_dict(h) for h in hits]

    def say() -> None:
        render.offers(console, rows)
        if not rows:
            click.echo("no free capacity matches; loosen a constraint", err=True)

    emit(as_json, rows, say)


def _latlon(value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        lat, lon = (float(x) for x in value.split(","))
    except ValueError:
        raise click.BadParameter(
            "expected LAT,LON, e.g. 52.52,13.40", param_hint="--near"
        ) from None
    return lat, lon


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
        emit(as_json, {"id": view.id, "state": view.state}, lambda: click.echo(view.id))
        return
    click.echo(f"submitted job {view.id} ({view.name}); waiting", err=True)
    view = client.wait(view.id, timeout_s=timeout_s)
    emit(as_json, view.to_dict(), lambda: render.job(console, view))
    if view.state != JobState.SUCCEEDED:
        raise DepinError(render.ending(view))


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
    emit(as_json, {"allocations": allocs}, lambda: click.echo(" ".join(map(str, allocs))))


@job.command("list")
@click.option(
    "--state", type=click.Choice([s.value for s in JobState]), help="Only jobs in this state."
)
@click.option("--account", help="Only this account's jobs.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@json_option
@click.pass_context
def job_list(
    ctx: click.Context, state: str | None, account: str | None, limit: int, as_json: bool
) -> None:
    """List jobs, newest first."""
    views = _client(ctx).jobs(account=account, state=state, limit=limit)
    emit(as_json, [v.to_dict() for v in views], lambda: render.job_table(console, views))


@job.command("status")
@click.argument("job_id", type=_ID)
@json_option
@click.pass_context
def job_status(ctx: click.Context, job_id: int, as_json: bool) -> None:
    """Show one job: state, placement, cost and the tail of its output."""
    view = _client(ctx).job(job_id)
    emit(as_json, view.to_dict(), lambda: render.job(console, view))


@job.command("cancel")
@click.argument("job_id", type=_ID)
@json_option
@click.pass_context
def job_cancel(ctx: click.Context, job_id: int, as_json: bool) -> None:
    """Cancel a job: at once unless it runs, else once its node has stopped it (paid so far)."""
    view = _client(ctx).cancel(job_id)
    emit(as_json, view.to_dict(), lambda: click.echo(f"job {view.id}: {view.state}"))


@job.command("logs")
@click.argument("job_id", type=_ID)
@click.option("-f", "--follow", is_flag=True, help="Print output as it comes, until the job ends.")
@click.pass_context
def job_logs(ctx: click.Context, job_id: int, follow: bool) -> None:
    """Print a job's output, as its node streamed it (through the API when remote)."""
    for text in _client(ctx).logs(job_id, follow=follow):
        click.echo(text, nl=False)
        sys.stdout.flush()


@job.command("explain")
@click.argument("job_id", type=_ID)
@json_option
@click.pass_context
def job_explain(ctx: click.Context, job_id: int, as_json: bool) -> None:
    """Why the job went where it went, or nowhere."""
    data = _client(ctx).explain(job_id)
    emit(as_json, data.to_dict(), lambda: render.explain(console, data))


# -- manifests ---------------------------------------------------------------------------------
@cli.group()
def manifest() -> None:
    """Sign and verify job manifests."""


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
    with render.writing(out) as stream:
        stream.write(envelope.to_json())
    click.echo(f"signed {file} -> {out} ({envelope.digest})", err=True)


@manifest.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--offline",
    is_flag=True,
    help="Check the signature with local keys only; the issuer stays unverified.",
)
@json_option
@click.pass_context
def manifest_verify(ctx: click.Context, file: Path, offline: bool, as_json: bool) -> None:
    """Check an envelope: its signature and, against the market, that its key may sign for
    the issuer it names (registered to it, not revoked) and that it is addressed here."""
    envelope = Envelope.from_json(file.read_bytes())
    check = _client(ctx).verify_envelope(envelope, offline=offline)
    claims = check.claims
    data = {
        "valid": True,
        "expired": claims.expires_at < datetime.now(UTC),
        "signer": claims.issuer,
        "issuer_verified": check.issuer_verified,
        "issuer_note": check.note,
        "key_id": check.key_id,
        "digest": envelope.digest,
        "payload_type": envelope.payload_type,
        "audience": claims.audience,
        "nonce": claims.nonce,
        "issued_at": claims.issued_at.isoformat(),
        "expires_at": claims.expires_at.isoformat(),
        "job": claims.job.to_json_dict(),
    }

    def say() -> None:
        click.echo("signature: ok" + (" (the envelope has expired)" if data["expired"] else ""))
        verified = "verified" if check.issuer_verified else "UNVERIFIED"
        click.echo(f"signer: {claims.issuer} ({verified}: {check.note})")
        for k in ("key_id", "digest", "audience", "nonce", "issued_at", "expires_at"):
            click.echo(f"{k}: {data[k]}")
        click.echo(f"job: {claims.job.name} ({' '.join(claims.job.command)})")

    emit(as_json, data, say)


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
@click.option(
    "--no-local-ray",
    is_flag=True,
    help="Run nothing on this machine: only nodes whose agents pull work, or whose Ray-mode "
    "agents joined DEPIN_RAY_ADDRESS, get work (as `depin serve` does for strangers).",
)
@json_option
@click.pass_context
def scheduler_run(
    ctx: click.Context, once: bool, no_launch: bool, no_local_ray: bool, as_json: bool
) -> None:
    """Schedule pending jobs until interrupted (a long-lived Ray driver)."""
    driver = _client(ctx).driver(kind="scheduler", launch=not no_launch, local_ray=not no_local_ray)
    summary = {"placed": 0, "unschedulable": 0, "conflicts": 0, "succeeded": 0, "failed": 0}
    log = render.cycle_logger(summary, as_json)
    try:
        if once:
            driver.run_once(on_report=log)
        else:
            click.echo(f"scheduler {driver.driver_id} running; Ctrl-C to stop", err=True)
            driver.run(on_report=log)
    except KeyboardInterrupt:
        click.echo("stopping: running allocations are requeued", err=True)
    finally:
        driver.stop()
    if as_json:
        click.echo(json.dumps(summary))


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
    entries = client.ledger_entries(account=account, limit=limit)
    data = {
        "balances": [render.balance_dict(b) for b in balances],
        "entries": [dataclasses.asdict(e) for e in entries],
    }
    emit(as_json, data, lambda: render.ledger(console, balances, entries))


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
    with render.writing(out) as stream:
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
    ok = f"ledger ok: {report.entries} entries, {report.accounts} accounts, debits = credits"
    emit(as_json, report.to_dict(), lambda: click.echo(ok) if report.ok else None)
    if not report.ok:
        where = f" at entry #{report.first_bad_position}" if report.first_bad_position else ""
        raise DepinError(f"ledger verify failed{where}: {report.problems[0]}")


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
