"""The app factories uvicorn imports: a market from the environment, served over HTTP.

``depin serve`` names one of these, so each worker process opens its own
``Marketplace`` (its own database connections) from the same settings.
"""

from __future__ import annotations

from fastapi import FastAPI

from depin.api.app import create_app
from depin.config import Settings
from depin.market import Marketplace


def app() -> FastAPI:
    """The API alone: scheduling happens in another process."""
    return create_app(Marketplace(Settings.from_env()))


def app_with_scheduler() -> FastAPI:
    """The API, and the scheduler loop as a task of the same process."""
    return create_app(Marketplace(Settings.from_env()), scheduler=True)


def app_with_reserving_scheduler() -> FastAPI:
    """The API, and a scheduler loop that only reserves: a launcher runs the allocations."""
    return create_app(Marketplace(Settings.from_env()), scheduler=True, launch=False)
