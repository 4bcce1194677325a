"""Accounts and their keys: open, deposit, rotate, revoke, and who signs a request.

Functions here work inside the caller's transaction (the market owns
transactions). Every writer of keys takes the ledger's lock first, as
submissions do before they re-read their keys, so a revocation is ordered
wholly before or after any submission.

The market operator is not an account: its key (the one that signs
deposits, ``depin init`` makes it as the local key ``operator``) is a setting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from depin.db.models import Account, AccountKey, Setting, utcnow
from depin.errors import ConflictError, ForbiddenError, InputError, NotFoundError
from depin.keys import key_id as compute_key_id
from depin.keys import public_key_b64, public_key_from_b64
from depin.ledger import WORLD_ACCOUNT, Ledger
from depin.spec import NAME_PATTERN
from depin.views import KeyView

OPEN_KINDS = ("developer", "provider")  # what anyone may open for themselves
OPERATOR_SETTING = "operator_key"  # "<key id> <base64 public key>"
_NAME_RE = re.compile(NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class Signer:
    """A registered key as a signed request's check needs it."""

    key_id: str
    public_key: Ed25519PublicKey
    account_id: int
    account: str  # the operator's key signs for @world
    account_kind: str
    state: str
    not_before: datetime | None
    not_after: datetime | None
    revoked_at: datetime | None
    operator: bool = False

    @property
    def account_name(self) -> str:  # as the key checks name it (``submission.check_key_usable``)
        return self.account


def check_new_account(name: str, kind: str) -> None:
    if kind not in OPEN_KINDS:
        raise InputError(f"account kind must be developer or provider (got {kind!r})")
    if not _NAME_RE.match(name):
        raise InputError(
            f"bad account name {name!r}: use lowercase letters, digits, '.', '_' or '-'"
        )


def create(s: Session, name: str, kind: str, public_key: Ed25519PublicKey) -> int:
    """Open account ``name`` that ``public_key`` signs for; its id."""
    kid = compute_key_id(public_key)
    if s.execute(select(Account.id).where(Account.name == name)).first():
        raise ConflictError(f"account {name!r} already exists")
    if s.execute(select(AccountKey.id).where(AccountKey.key_id == kid)).first():
        raise ConflictError(f"key {kid} is already registered to another account")
    acct = Account(name=name, kind=kind, must_not_overdraw=True)
    s.add(acct)
    s.flush()
    s.add(AccountKey(account_id=acct.id, key_id=kid, public_key=public_key_b64(public_key)))
    s.flush()
    return acct.id


def deposit(s: Session, name: str, amount_micro_usd: int) -> int:
    """Pay money into an account from outside the market; the transfer's id."""
    ledger = Ledger(s)
    ledger.lock()
    acct = ledger.account(name)
    if acct.kind not in OPEN_KINDS:
        raise InputError(f"cannot deposit into system account {name!r}")
    world = ledger.account(WORLD_ACCOUNT)
    return ledger.transfer(
        world.id, acct.id, amount_micro_usd, "deposit", memo=f"deposit to {name}"
    )


def rotate(
    s: Session,
    account: str,
    public_key: Ed25519PublicKey,
    *,
    not_after: datetime | None,
    revoke_old: bool,
) -> tuple[KeyView, list[KeyView]]:
    """Register a new key and, with ``revoke_old``, revoke the account's other active keys."""
    kid = compute_key_id(public_key)
    ledger = Ledger(s)
    ledger.lock()
    acct = ledger.account(account)
    if acct.kind not in OPEN_KINDS:
        raise InputError(f"system account {account!r} has no keys")
    if s.execute(select(AccountKey.id).where(AccountKey.key_id == kid)).first():
        raise ConflictError(f"key {kid} is already registered")
    revoked = []
    if revoke_old:
        for old in s.execute(
            select(AccountKey)
            .where(AccountKey.account_id == acct.id, AccountKey.state == "active")
            .order_by(AccountKey.id)
        ).scalars():
            old.state, old.revoked_at = "revoked", utcnow()
            revoked.append(old)
    key = AccountKey(
        account_id=acct.id, key_id=kid, public_key=public_key_b64(public_key), not_after=not_after
    )
    s.add(key)
    s.flush()
    return KeyView.of(key, acct), [KeyView.of(k, acct) for k in revoked]


def revoke(s: Session, key_id: str, *, by: str | None = None) -> KeyView:
    """Revoke a key: from now on nothing it signs is accepted. With ``by`` (who asks), only
    that account's own key."""
    Ledger(s).lock()
    row = s.execute(
        select(AccountKey, Account)
        .join(Account, Account.id == AccountKey.account_id)
        .where(AccountKey.key_id == key_id)
        .with_for_update()
    ).first()
    if row is None:
        raise NotFoundError(f"no registered key {key_id!r}: see `depin keys list --account NAME`")
    key, acct = row
    if by is not None and acct.name != by:
        raise ForbiddenError(f"key {key_id} belongs to {acct.name!r}; you sign as {by!r}")
    if key.state != "revoked":
        key.state, key.revoked_at = "revoked", utcnow()
    s.flush()
    return KeyView.of(key, acct)


def operator_key(s: Session) -> tuple[str, str] | None:
    """The operator's (key id, base64 public key), if the market has one."""
    value = s.execute(select(Setting.value).where(Setting.key == OPERATOR_SETTING)).scalar()
    if not value:
        return None
    kid, public = value.split(" ", 1)
    return kid, public


def set_operator_key(s: Session, public_key: Ed25519PublicKey) -> bool:
    """Make ``public_key`` the operator's unless the market has one; True if it was set."""
    if operator_key(s) is not None:
        return False
    value = f"{compute_key_id(public_key)} {public_key_b64(public_key)}"
    s.add(Setting(key=OPERATOR_SETTING, value=value))
    s.flush()
    return True


def signer(s: Session, key_id: str) -> Signer | None:
    """Who signs with ``key_id``: a registered account key, the operator's key, or nobody."""
    row = s.execute(
        select(AccountKey, Account)
        .join(Account, Account.id == AccountKey.account_id)
        .where(AccountKey.key_id == key_id)
    ).first()
    if row is not None:
        key, acct = row
        return Signer(
            key.key_id,
            public_key_from_b64(key.public_key),
            acct.id,
            acct.name,
            acct.kind,
            key.state,
            key.not_before,
            key.not_after,
            key.revoked_at,
        )
    operator = operator_key(s)
    if operator is None or operator[0] != key_id:
        return None
    world = Ledger(s).account(WORLD_ACCOUNT)
    public = public_key_from_b64(operator[1])
    kind, state = world.kind, "active"
    return Signer(key_id, public, world.id, world.name, kind, state, None, None, None, True)
