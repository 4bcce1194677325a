"""The app factories uvicorn imports: a market from the environment, served over HTTP.

``depin serve`` names one of these, so each worker process opens its own
``Marketplace`` (its own database connections) from the same settings.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from depin.api import auth
from depin.api.app import create_app
from depin.config import Settings
from depin.errors import ConfigError
from depin.market import Marketplace

# Rate limits, sustained requests per second: per signing key, and per address for unsigned
# requests (``depin bench api`` raises the latter: all its clients share one loopback).
ENV_RATE_PER_KEY = "DEPIN_API_RATE_PER_KEY"
ENV_RATE_PER_ADDRESS = "DEPIN_API_RATE_PER_ADDRESS"
# Set by ``depin serve --local-ray``: nodes without an agent run their work on a Ray
# instance on this machine (one operator's demo; never a market of strangers).
ENV_LOCAL_RAY = "DEPIN_SERVE_LOCAL_RAY"


def _limiter(env: str, default: float) -> auth.RateLimiter:
    text = os.environ.get(env) or str(default)
    try:
        rate = float(text)
    except ValueError:
        rate = 0.0
    if not 0 < rate < float("inf"):
        raise ConfigError(f"{env} must be a positive number of requests per second (got {text!r})")
    return auth.RateLimiter(rate, max(1, int(2 * rate)))


def _app(scheduler: bool, launch: bool = True) -> FastAPI:
    return create_app(
        Marketplace(Settings.from_env(), group_commit=True),
        scheduler=scheduler,
        launch=launch,
        local_ray=os.environ.get(ENV_LOCAL_RAY) == "1",
        limiter=_limiter(ENV_RATE_PER_KEY, auth.RATE_PER_S),
        address_limiter=_limiter(ENV_RATE_PER_ADDRESS, auth.ADDRESS_RATE_PER_S),
    )


def app() -> FastAPI:
    """The API alone: scheduling happens in another process."""
    return _app(scheduler=False)


def app_with_scheduler() -> FastAPI:
    """The API, and the scheduler loop as a task of the same process."""
    return _app(scheduler=True)


def app_with_reserving_scheduler() -> FastAPI:
    """The API, and a scheduler loop that only reserves: a launcher runs the allocations."""
    return _app(scheduler=True, launch=False)
