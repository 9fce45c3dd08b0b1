"""Applies central's Alembic migrations to the database named by DATABASE_URL."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config

HERE = Path(__file__).parent


def sqlalchemy_url(database_url: str | None) -> str:
    """postgresql://... as SQLAlchemy's asyncpg dialect wants it."""
    if not database_url:
        raise SystemExit("DATABASE_URL is not set (e.g. postgresql://user:pass@host:5432/db)")
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+asyncpg://" + database_url[len(prefix) :]
    return database_url


def database_url_from_env() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("DATABASE_URL is not set (e.g. postgresql://user:pass@host:5432/db)")
    return url


def alembic_config(database_url: str) -> Config:
    cfg = Config(str(HERE / "alembic.ini"))
    cfg.set_main_option("script_location", str(HERE / "migrations"))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    cfg.set_main_option("database_url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate up to ``revision``. Idempotent. Blocks (runs its own event loop)."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Migrate down to ``revision`` (``base`` drops everything). Blocks."""
    command.downgrade(alembic_config(database_url), revision)
