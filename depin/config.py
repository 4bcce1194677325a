"""Where depin keeps its state: embedded by default, distributed by configuration.

With no settings, depin uses ``DEPIN_HOME`` (the user data directory) for a
SQLite file and keys, and starts a local Ray instance when a job must run.
``DEPIN_DATABASE_URL`` points at PostgreSQL; ``DEPIN_RAY_ADDRESS`` at an
existing Ray cluster; ``DEPIN_API_URL`` at a market served over HTTP
(``depin serve``), which then replaces the database for everything but the
server itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from depin.errors import ConfigError
from depin.limits import NODE_GRACE_S, NODE_TTL_S

ENV_HOME = "DEPIN_HOME"
ENV_DATABASE_URL = "DEPIN_DATABASE_URL"
ENV_RAY_ADDRESS = "DEPIN_RAY_ADDRESS"
ENV_API_URL = "DEPIN_API_URL"
ENV_ACCOUNT = "DEPIN_ACCOUNT"
ENV_NODE_TTL_S = "DEPIN_NODE_TTL_S"
ENV_NODE_GRACE_S = "DEPIN_NODE_GRACE_S"
DATABASE_FILE_NAME = "depin.db"
KEYS_DIR_NAME = "keys"


@dataclass(frozen=True, slots=True)
class Settings:
    """Resolved settings of one depin process."""

    home: Path
    database_url: str
    ray_address: str | None
    api_url: str | None = None  # a market over HTTP (``depin serve``) instead of the database
    account: str | None = None  # who asks, where several local accounts could
    # A node whose agent is silent for node_ttl_s + node_grace_s goes offline.
    node_ttl_s: float = NODE_TTL_S
    node_grace_s: float = NODE_GRACE_S

    @property
    def keys_dir(self) -> Path:
        return self.home / KEYS_DIR_NAME

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(
        cls,
        *,
        home: str | os.PathLike[str] | None = None,
        database_url: str | None = None,
        ray_address: str | None = None,
        api_url: str | None = None,
        account: str | None = None,
    ) -> Settings:
        """Explicit arguments win over the environment, which wins over defaults."""
        home_path = Path(home or os.environ.get(ENV_HOME) or platformdirs.user_data_dir("depin"))
        home_path = home_path.expanduser()
        url = database_url or os.environ.get(ENV_DATABASE_URL)
        if not url:
            url = f"sqlite:///{home_path / DATABASE_FILE_NAME}"
        if not url.startswith(("sqlite", "postgresql")):
            raise ConfigError(
                f"unsupported database URL {redact_url(url)!r}: use sqlite:///PATH or "
                "postgresql+psycopg://USER@HOST:PORT/DB"
            )
        address = ray_address or os.environ.get(ENV_RAY_ADDRESS) or None
        api = api_url or os.environ.get(ENV_API_URL) or None
        if api is not None and not api.startswith(("http://", "https://")):
            raise ConfigError(f"the market's API URL must start with http:// or https:// ({api!r})")
        who = account or os.environ.get(ENV_ACCOUNT) or None
        ttl_s = _seconds(ENV_NODE_TTL_S, NODE_TTL_S)
        grace_s = _seconds(ENV_NODE_GRACE_S, NODE_GRACE_S)
        return cls(home_path, url, address, api, who, ttl_s, grace_s)

    def ensure_home(self) -> None:
        """Create DEPIN_HOME and its keys directory (0700: they hold private keys)."""
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            self.keys_dir.mkdir(mode=0o700, exist_ok=True)
            self.keys_dir.chmod(0o700)  # mkdir's mode does not reach a directory that existed
        except OSError as exc:
            raise ConfigError(f"cannot create DEPIN_HOME {self.home}: {exc.strerror}") from exc


def _seconds(env: str, default: float) -> float:
    text = os.environ.get(env) or ""
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 86_400:
        raise ConfigError(f"{env} must be a number of seconds from 0 to 86400 (got {text!r})")
    return value


def redact_url(url: str) -> str:
    """A database URL fit for a message: the password replaced by ***."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest and ":" in rest.split("@", 1)[0]:
        user = rest.split("@", 1)[0].split(":", 1)[0]
        rest = f"{user}:***@{rest.split('@', 1)[1]}"
    return f"{scheme}{sep}{rest}"
