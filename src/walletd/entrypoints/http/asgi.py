"""ASGI factory for uvicorn workers: settings come from the environment."""

from __future__ import annotations

from fastapi import FastAPI

from walletd.logging import configure_logging
from walletd.settings import Settings


def create_app_from_env() -> FastAPI:
    from walletd.entrypoints.http.app import create_app

    settings = Settings()
    configure_logging(settings.log_level)
    return create_app(settings)
