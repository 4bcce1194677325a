"""The Python SDK: one interface over any ``depin.protocol.Market``.

    from depin import Client, load_job
    client = Client()                       # DEPIN_HOME, DEPIN_DATABASE_URL, DEPIN_RAY_ADDRESS
    client = Client(url="http://coordinator:8420")   # or DEPIN_API_URL: the market over HTTP
    job = client.submit_file("job.yaml", account="alice")
    job = client.wait(job.id)               # drives a scheduler cycle while no scheduler runs

Keys live on the client's machine (``DEPIN_HOME/keys``); the market only ever
sees public keys and signed envelopes. By default the market is the embedded
one (an in-process ``Marketplace`` over ``DEPIN_DATABASE_URL``); with ``url``
(or ``DEPIN_API_URL``) it is a ``depin serve`` over HTTP, with the same
methods, results and errors; ``market=`` takes any other implementation.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from depin import keys as keystore
from depin import manifest
from depin.config import Settings
from depin.errors import (
    ConfigError,
    DatabaseError,
    ForeignAudienceError,
    InputError,
    NotFoundError,
    UnknownKeyError,
)
from depin.keys import KeyInfo
from depin.ledger import Balance, VerifyReport
from depin.limits import CLIENT_ATTEMPTS, CLIENT_BACKOFF_S
from depin.manifest import Claims, Envelope
from depin.money import usd_to_micro
from depin.protocol import Market
from depin.spec import (
    JobSpec,
    NodeSpec,
    describe_validation_error,
    job_from_data,
    parse_yaml,
    read_manifest_text,
)
from depin.states import JobState
from depin.submission import KeyRecord, check_key_usable
from depin.views import (
    AccountView,
    AllocationView,
    EntryView,
    ExplainView,
    JobView,
    KeyView,
    LogPage,
    NodeView,
)
from scheduler.search import Hit

if TYPE_CHECKING:
    from depin.runtime.loop import Driver

T = TypeVar("T")
WAIT_POLL_S = 0.5
LOG_POLL_S = 0.2  # a followed log, read from the embedded market, looks again this often
OPERATOR_KEY = "operator"  # the coordinator's local key that signs deposits


@dataclass(frozen=True, slots=True)
class EnvelopeCheck:
    """What ``verify_envelope`` established about a signed envelope."""

    key_id: str
    claims: Claims
    issuer_verified: bool  # the key is registered to the claimed issuer, usable, audience ours
    note: str  # how the issuer was (or was not) verified


class LocalKeys:
    """The keys in this machine's ``DEPIN_HOME``: files, never sent anywhere (both clients)."""

    settings: Settings

    def new_key(self, name: str) -> KeyInfo:
        self.settings.ensure_home()
        return keystore.generate(name, self.settings.keys_dir)

    def local_keys(self) -> list[KeyInfo]:
        return keystore.list_keys(self.settings.keys_dir)

    def public_key(self, key: str) -> Ed25519PublicKey:
        return keystore.load_public(key, self.settings.keys_dir)


class Client(LocalKeys):
    """Submit, watch and pay for work on a depin marketplace."""

    def __init__(
        self,
        *,
        home: str | Path | None = None,
        database_url: str | None = None,
        ray_address: str | None = None,
        settings: Settings | None = None,
        market: Market | None = None,
        url: str | None = None,
        account: str | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env(
            home=home, database_url=database_url, ray_address=ray_address, api_url=url,
            account=account,
        )  # fmt: skip
        self._market = market

    @property
    def remote(self) -> bool:
        """True when the market is a ``depin serve`` reached over HTTP."""
        return (self._market is None and self.settings.api_url is not None) or (
            self._market is not None and not _is_local(self._market)
        )

    @property
    def market(self) -> Market:
        """The market, opened (and, when embedded, migrated) on first use."""
        if self._market is None:
            if self.settings.api_url is not None:
                from depin.api.remote import HttpMarket

                self._market = HttpMarket(
                    self.settings.api_url, self.settings.keys_dir, account=self.settings.account
                )
            else:
                from depin.market import Marketplace

                self._market = Marketplace(self.settings)
        return self._market

    @property
    def market_id(self) -> str:
        return self.market.market_id

    def close(self) -> None:
        if self._market is not None:
            self._market.close()
            self._market = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def init(self) -> dict[str, str]:
        """Create DEPIN_HOME (and its keys) and learn the market's id. On the coordinator (an
        embedded market) this also makes the operator's key, which signs deposits."""
        from depin.config import redact_url

        self.settings.ensure_home()
        where = {"api": self.settings.api_url} if self.remote else {
            "database": redact_url(self.settings.database_url)
        }  # fmt: skip
        if not self.remote:
            self._ensure_operator_key()
        return {"home": str(self.settings.home), **where, "market_id": self.market_id}

    def _ensure_operator_key(self) -> None:
        """The local key ``operator`` becomes the market's operator key, if it has none yet."""
        from depin.market import Marketplace

        market = self.market
        assert isinstance(market, Marketplace)
        if market.operator_key() is not None:
            return
        if OPERATOR_KEY not in {k.name for k in self.local_keys()}:
            self.new_key(OPERATOR_KEY)
        market.set_operator_key(self.public_key(OPERATOR_KEY))

    # -- keys -------------------------------------------------------------------------------
    def rotate_key(
        self, account: str, *, revoke_old: bool = False, expires_in_days: int | None = None
    ) -> tuple[KeyInfo, list[KeyView]]:
        """Make a new local key for ``account`` and register it; with ``revoke_old`` the
        account's other keys are revoked in the same transaction.

        Returns the new key and the keys revoked.
        """
        self.market.account(account)  # a typo fails before a key file is made
        info = self.new_key(next_key_name(account, self.local_keys()))
        _, revoked = self.market.rotate_key(
            account,
            self.public_key(info.name),
            not_after=key_expiry(expires_in_days),
            revoke_old=revoke_old,
        )
        return info, revoked

    def revoke_key(self, key: str) -> KeyView:
        """Revoke a registered key, given its id or the name of a local key."""
        return self.market.revoke_key(key_id_of(key, self.local_keys()))

    def registered_keys(self, account: str) -> list[KeyView]:
        return self.market.keys_of(account)

    def _retrying(self, call: Callable[[str], T], key: str | None) -> T:
        """Call with an idempotency key (a fresh UUID unless given), retried on transient failures.

        A retry reuses the key, so a request that committed before its answer
        was lost returns the first result instead of acting twice. Only the embedded
        market is retried here: over HTTP the transport retries already (``depin.api.remote``),
        and retrying its 503s again would multiply the attempts.
        """
        key = uuid.uuid4().hex if key is None else key
        attempts = 1 if self.remote else CLIENT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            try:
                return call(key)
            except DatabaseError:
                if attempt == attempts:
                    raise
                time.sleep(CLIENT_BACKOFF_S * attempt)
        raise AssertionError("unreachable")

    # -- accounts ------------------------------------------------------------------------------
    def create_account(
        self, name: str, *, key: str, kind: str = "developer", idempotency_key: str | None = None
    ) -> AccountView:
        public = self.public_key(key)
        return self._retrying(
            lambda k: self.market.create_account(name, public, kind=kind, idempotency_key=k),
            idempotency_key,
        )

    def register_provider(
        self, name: str, *, key: str, idempotency_key: str | None = None
    ) -> AccountView:
        return self.create_account(name, key=key, kind="provider", idempotency_key=idempotency_key)

    def deposit(
        self, account: str, usd: Decimal | str | int, *, idempotency_key: str | None = None
    ) -> Balance:
        micro = usd_to_micro(usd)
        return self._retrying(
            lambda k: self.market.deposit(account, micro, idempotency_key=k), idempotency_key
        )

    def account(self, name: str) -> AccountView:
        return self.market.account(name)

    def balances(self, account: str | None = None) -> list[Balance]:
        return self.market.balances(account)

    # -- nodes ---------------------------------------------------------------------------------
    def add_node(
        self, spec: NodeSpec | None = None, *, idempotency_key: str | None = None, **fields: Any
    ) -> NodeView:
        """Register a node: a NodeSpec, or its fields as keyword arguments."""
        node = spec if spec is not None else node_spec(fields)
        return self._retrying(
            lambda k: self.market.add_node(node, idempotency_key=k), idempotency_key
        )

    def add_nodes(self, specs: Sequence[NodeSpec]) -> list[int]:
        """Register many nodes at once (all or none); returns their ids."""
        return self.market.add_nodes(specs)

    def search(self, request: JobSpec, *, sort: str = "price", limit: int = 20) -> list[Hit]:
        """Free capacity that could take ``request`` now, best first."""
        return self.market.search(request, sort=sort, limit=limit)

    def nodes(self) -> list[NodeView]:
        return self.market.nodes()

    # -- manifests -----------------------------------------------------------------------------
    def sign(
        self,
        spec: JobSpec,
        *,
        key: str,
        account: str | None = None,
        audience: str | None = None,
        ttl_s: int = manifest.DEFAULT_TTL_S,
    ) -> Envelope:
        """Sign ``spec`` with a local key for ``account`` (default: the key's account)."""
        private = keystore.load_private(key, self.settings.keys_dir)
        if account is None:
            kid = keystore.key_id(private.public_key())
            account = account_of_key(self.market.registered_keys([kid]), key, kid)
        return manifest.sign(
            spec, private, issuer=account, audience=audience or self.market_id, ttl_s=ttl_s
        )

    def verify_envelope(self, envelope: Envelope, *, offline: bool = False) -> EnvelopeCheck:
        """Check an envelope's signature, and (unless ``offline``) who may have signed it.

        Against the market: the key is registered, usable now, and registered to
        the account the envelope names as its issuer, and the audience is this
        market; any of these failing raises. Offline, the signature is checked
        with local public keys only, and the issuer stays unverified: a key
        proves who holds it, not which account it speaks for.
        """
        if offline:
            local = {k.key_id: self.public_key(k.name) for k in self.local_keys()}
            return checked_offline(envelope, local)
        key, claims = self._verified(envelope)
        return checked_envelope(key, claims, self.market_id)

    def _verified(self, envelope: Envelope) -> tuple[KeyView, Claims]:
        """The envelope checked against the market's registered keys (``verified_envelope``)."""
        return verified_envelope(envelope, self.market.registered_keys(signature_ids(envelope)))

    def _signing_identity(self, account: str | None) -> tuple[str, str]:
        """The account that submits and the newest active local key registered to it, from one
        read of the market: the keys among the local ones, with their accounts."""
        local = [k for k in self.local_keys() if k.path.exists()]
        registered = self.market.registered_keys([k.key_id for k in local])
        return signing_identity(local, registered, account, self.settings.keys_dir)

    def signing_key_for(self, account: str) -> str:
        """The newest local key registered, and active, for ``account`` (its name in keys/)."""
        return self._signing_identity(account)[1]

    def default_account(self) -> str:
        """The one developer account a local key is registered to, when there is exactly one."""
        return self._signing_identity(None)[0]

    # -- jobs ----------------------------------------------------------------------------------
    def submit(
        self,
        job: JobSpec | Envelope,
        *,
        account: str | None = None,
        key: str | None = None,
        idempotency_key: str | None = None,
    ) -> JobView:
        """Submit a signed envelope, or sign a JobSpec with the account's local key first."""
        envelope = self._signed([job], account=account, key=key)[0]
        return self._retrying(
            lambda k: self.market.submit(envelope, idempotency_key=k), idempotency_key
        )

    def submit_many(
        self,
        jobs: Sequence[JobSpec | Envelope],
        *,
        account: str | None = None,
        key: str | None = None,
        idempotency_key: str | None = None,
    ) -> list[int]:
        """Sign (where needed) and submit many jobs in one transaction, all or none; returns ids."""
        envelopes = self._signed(jobs, account=account, key=key)
        return self._retrying(
            lambda k: self.market.submit_many(envelopes, idempotency_key=k), idempotency_key
        )

    def _signed(
        self, jobs: Sequence[JobSpec | Envelope], *, account: str | None, key: str | None
    ) -> list[Envelope]:
        """Envelopes for ``jobs``: specs signed here, envelopes signed elsewhere checked first.

        ``account`` (``--as``) names who signs a manifest; an envelope already says,
        and is only believed once its signature verifies.
        """
        if account is not None:
            for envelope in (j for j in jobs if isinstance(j, Envelope)):
                check_signed_as(self._verified(envelope)[1], account)
        if all(isinstance(j, Envelope) for j in jobs):
            return list(jobs)  # type: ignore[arg-type]
        if key is None:
            account, key = self._signing_identity(account)
        elif account is None:
            account = self._signing_identity(None)[0]
        private = keystore.load_private(key, self.settings.keys_dir)
        return sign_all(jobs, private, issuer=account, audience=self.market_id)

    def submit_file(
        self, path: str | Path, *, account: str | None = None, idempotency_key: str | None = None
    ) -> JobView:
        """Submit a YAML manifest (signed here) or a JSON envelope signed elsewhere."""
        return self.submit(load_submission(path), account=account, idempotency_key=idempotency_key)

    def place(self, job_id: int, node_id: int, *, idempotency_key: str | None = None) -> list[int]:
        """Reserve a pending job on a node of your choosing; refused if the node lacks room."""
        return self._retrying(
            lambda k: self.market.place(job_id, node_id, idempotency_key=k), idempotency_key
        )

    def jobs(
        self, *, account: str | None = None, state: JobState | str | None = None, limit: int = 100
    ) -> list[JobView]:
        wanted = None if state is None else job_state(state)
        return self.market.jobs(account=account, state=wanted, limit=limit)

    def job(self, job_id: int) -> JobView:
        return self.market.job(job_id)

    def explain(self, job_id: int) -> ExplainView:
        return self.market.explain(job_id)

    def cancel(self, job_id: int) -> JobView:
        """Cancel a job: at once unless it runs, else once its node has stopped it."""
        return self.market.cancel(job_id)

    def logs(self, job_id: int, *, follow: bool = False) -> Iterator[str]:
        """The job's output as its node streamed it; with ``follow``, as it is printed, until
        the job ends. A job run by the market's own Ray streams none: its tail comes last."""
        follower = getattr(self.market, "follow_logs", None)
        pages = (
            follower(job_id)
            if follow and follower is not None
            else _polled_logs(self.market, job_id, follow)
        )
        for page in pages:
            for _, _, text in page.chunks:
                yield text
            if page.done:
                yield from page.tails

    def allocations(self, node_id: int, *, limit: int = 100) -> list[AllocationView]:
        """The allocations on a node, newest first: what its provider may read."""
        return self.market.allocations(node_id, limit=limit)

    # -- running work --------------------------------------------------------------------------
    def driver(
        self,
        *,
        kind: str = "scheduler",
        job_ids: Sequence[int] | None = None,
        launch: bool = True,
        local_ray: bool = True,
    ) -> Driver:
        """A driver that schedules, launches on Ray and settles (``depin scheduler run``);
        without ``local_ray`` it runs nothing on this machine (see ``Driver``).

        Only a market this process holds can be driven: a remote one runs its own.
        """
        from depin.runtime.loop import Driver  # Ray is imported only by callers that run work

        market = self.market
        if not _is_local(market):
            raise ConfigError(
                "this market schedules its own jobs: a scheduler runs beside its database"
            )
        return Driver(
            market,
            ray_address=self.settings.ray_address,
            kind=kind,
            job_ids=job_ids,
            launch=launch,
            local_ray=local_ray,
        )

    def wait(self, job_id: int, *, timeout_s: float | None = None) -> JobView:
        """Wait until the job ends.

        While a ``depin scheduler run`` is alive (or the market is remote) this only
        watches; otherwise it drives scheduling and Ray itself for this job, as long as
        it waits.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if not _is_local(self.market) or self.market.scheduler_running():
            while not (view := self.job(job_id)).terminal:
                if deadline is not None and time.monotonic() > deadline:
                    return view
                time.sleep(WAIT_POLL_S)
            return view
        with self.driver(kind="submit", job_ids=[job_id]) as driver:
            driver.run(until=lambda: self.job(job_id).terminal, timeout_s=timeout_s)
        return self.job(job_id)

    # -- ledger --------------------------------------------------------------------------------
    def ledger_entries(self, *, account: str | None = None, limit: int = 100) -> list[EntryView]:
        """The newest ``limit`` ledger entries (of ``account``, or all), oldest of them first."""
        return self.market.ledger_entries(account=account, limit=limit)

    def export_ledger(self) -> Iterator[dict[str, Any]]:
        return self.market.export_ledger()

    def verify_ledger(self) -> VerifyReport:
        return self.market.verify_ledger()

    # -- the embedded database -----------------------------------------------------------------
    def upgrade_database(self, revision: str = "head") -> str:
        """Apply the migrations of the embedded (or configured) database; its revision after."""
        from depin.db.engine import make_engine
        from depin.db.migrate import current_revision, upgrade

        if self.settings.api_url is not None:
            raise ConfigError("the database of a market served over HTTP is upgraded where it runs")
        if self.settings.is_sqlite:
            self.settings.ensure_home()
        engine = make_engine(self.settings.database_url)
        try:
            upgrade(engine, revision)
            return current_revision(engine) or "base"
        finally:
            engine.dispose()


def _is_local(market: object) -> bool:
    """The embedded market (this process holds its database), which a driver can run."""
    from depin.market import Marketplace

    return isinstance(market, Marketplace)


def load_submission(path: str | Path) -> JobSpec | Envelope:
    """A file to submit: a YAML JobSpec, or a JSON envelope already signed."""
    text = read_manifest_text(path)
    if manifest.looks_like_envelope(text):
        return Envelope.from_json(text)
    return job_from_data(parse_yaml(text, source=str(path)), source=str(path))


# -- the steps both SDKs share (``Client`` and ``depin.AsyncClient``): pure, given what the
# market answered, so each client only does the asking -------------------------------------
def next_key_name(account: str, local: Sequence[KeyInfo]) -> str:
    """The name of ``account``'s next local key: ``<account>-2``, ``-3``, ... (the first free)."""
    names = {k.name for k in local}
    n = 2
    while f"{account}-{n}" in names:
        n += 1
    return f"{account}-{n}"


def key_expiry(expires_in_days: int | None) -> datetime | None:
    return None if expires_in_days is None else datetime.now(UTC) + timedelta(days=expires_in_days)


def key_id_of(key: str, local: Sequence[KeyInfo]) -> str:
    """A key given by the name of a local key, or by its id."""
    return {k.name: k.key_id for k in local}.get(key, key)


def account_of_key(found: Sequence[KeyView], key: str, kid: str) -> str:
    """The account local key ``key`` (id ``kid``) is registered to, from its lookup."""
    if not found:
        raise NotFoundError(
            f"key {key!r} ({kid}) is not registered to any account: "
            "pass --as ACCOUNT or register it with `depin account create`"
        )
    return found[0].account


def signing_identity(
    local: Sequence[KeyInfo], registered: Sequence[KeyView], account: str | None, keys_dir: Path
) -> tuple[str, str]:
    """The account that submits (the one named, else the one developer account a local key
    is registered to) and the name of its newest active local key."""
    if account is None:
        developers = sorted({k.account for k in registered if k.account_kind == "developer"})
        if len(developers) != 1:
            found = ", ".join(developers) or "none"
            raise InputError(
                f"say which account submits with --as ACCOUNT (local accounts: {found})"
            )
        account = developers[0]
    usable = [k for k in registered if k.account == account and k.state == "active"]
    if not usable:
        raise NotFoundError(
            f"no active private key for account {account!r} in {keys_dir}: "
            f"make one with `depin keys rotate {account}`, or sign elsewhere and submit "
            "the envelope"
        )
    names = {k.key_id: k.name for k in local}
    return account, names[usable[-1].key_id]  # registered_keys is oldest first


def sign_all(
    jobs: Sequence[JobSpec | Envelope], private: Ed25519PrivateKey, *, issuer: str, audience: str
) -> list[Envelope]:
    """Each spec signed; each envelope as it is."""
    return [
        j
        if isinstance(j, Envelope)
        else manifest.sign(j, private, issuer=issuer, audience=audience)
        for j in jobs
    ]


def signature_ids(envelope: Envelope) -> list[str]:
    return [s.keyid for s in envelope.signatures]


def verified_envelope(envelope: Envelope, registered: Sequence[KeyView]) -> tuple[KeyView, Claims]:
    """The signature verified with the market's ``registered`` keys, then (only then) the
    payload parsed; the key must be registered to the issuer the payload names."""
    keys = {k.key_id: k for k in registered}

    def find(kid: str) -> list[Ed25519PublicKey]:
        return [keystore.public_key_from_b64(keys[kid].public_key)] if kid in keys else []

    signature, _ = manifest.verify_signature(envelope, find)
    key = keys[signature.keyid]
    claims = manifest.parse_claims(envelope, signer_account=key.account)
    if claims.issuer != key.account:
        raise UnknownKeyError(
            f"the envelope names issuer {claims.issuer!r}, but key {key.key_id} is "
            f"registered to {key.account!r}: it cannot sign for {claims.issuer!r}"
        )
    return key, claims


def checked_envelope(key: KeyView, claims: Claims, market_id: str) -> EnvelopeCheck:
    """A verified envelope's key is usable now and its audience is this market."""
    check_key_usable(_key_record(key), datetime.now(UTC))
    if claims.audience != market_id:
        raise ForeignAudienceError(
            f"envelope is for marketplace {claims.audience!r}, not this one ({market_id})"
        )
    note = f"key {key.key_id} is registered to {key.account!r} and {key.state}"
    return EnvelopeCheck(key.key_id, claims, True, note)


def checked_offline(envelope: Envelope, local: dict[str, Ed25519PublicKey]) -> EnvelopeCheck:
    """The signature checked with local public keys only; the issuer stays unverified."""
    signature, _ = manifest.verify_signature(
        envelope, lambda kid: [local[kid]] if kid in local else []
    )
    claims = manifest.parse_claims(envelope)
    note = "offline: the key is not checked against any market's registry"
    return EnvelopeCheck(signature.keyid, claims, False, note)


def check_signed_as(claims: Claims, account: str) -> None:
    """An envelope signed elsewhere is submitted ``--as`` the account it was signed for."""
    if claims.issuer != account:
        raise InputError(
            f"the envelope is signed for account {claims.issuer!r}, not "
            f"{account!r}: submit it without --as, or sign the manifest as that "
            "account"
        )


def job_state(state: JobState | str) -> JobState:
    try:
        return JobState(state)
    except ValueError:
        raise InputError(f"unknown job state {state!r}: one of {', '.join(JobState)}") from None


def node_spec(fields: dict[str, Any]) -> NodeSpec:
    """A NodeSpec from keyword arguments, or an ``InputError`` saying what is wrong."""
    try:
        return NodeSpec.model_validate(fields)
    except ValidationError as exc:
        raise InputError(f"node: {describe_validation_error(exc)}") from None


def _key_record(key: KeyView) -> KeyRecord:
    """A registered key as the market's own key checks take it."""

    def instant(text: str | None) -> datetime | None:
        return None if text is None else datetime.fromisoformat(text)

    return KeyRecord(
        key.key_id,
        0,
        key.account,
        key.public_key,
        key.state,
        instant(key.revoked_at),
        instant(key.not_before),
        instant(key.not_after),
    )


def _polled_logs(market: Market, job_id: int, follow: bool) -> Iterator[LogPage]:
    """Pages of a job's output after each other; following, polled until the job has ended."""
    after = 0
    while True:
        page = market.job_logs(job_id, after_id=after)
        yield page
        if page.done or (not follow and not page.chunks):
            return
        after = page.next_after
        if not page.chunks:
            time.sleep(LOG_POLL_S)
