"""Settings: one typed object read from the environment (``WALLETD_*``) once at start."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of walletd. See docs/configuration.md for the reference."""

    model_config = SettingsConfigDict(env_prefix="WALLETD_", extra="ignore")

    database_url: str = "postgresql://walletd@127.0.0.1:5432/walletd"
    redis_url: str | None = None
    kafka_bootstrap: str | None = None
    kafka_topic: str = "walletd.events"

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)

    # HTTP limits (docs/security.md): deadlines and head size per connection,
    # connections per worker process, backlog of the listening socket.
    http_header_timeout_seconds: float = Field(default=15.0, gt=0, le=300)
    http_body_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    http_keep_alive_seconds: int = Field(default=5, ge=1, le=300)
    http_max_head_bytes: int = Field(default=64 * 1024, ge=1024, le=1024 * 1024)
    http_max_connections: int = Field(default=1000, ge=1, le=100_000)
    http_backlog: int = Field(default=2048, ge=1, le=65_535)

    database_pool_min: int = Field(default=2, ge=1, le=200)
    database_pool_max: int = Field(default=20, ge=1, le=500)
    database_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    database_acquire_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    # Server-side bounds on the API's database sessions (0 turns one off): a stuck
    # statement or lock wait ends as a 503 instead of holding a group forever. Below
    # database_timeout_seconds, so that they fire first and fail the one request alone.
    database_statement_timeout_seconds: float = Field(default=4.0, ge=0, le=3600)
    database_lock_timeout_seconds: float = Field(default=2.0, ge=0, le=3600)
    database_idle_in_transaction_timeout_seconds: float = Field(default=30.0, ge=0, le=3600)
    redis_timeout_seconds: float = Field(default=0.05, gt=0, le=10)
    kafka_timeout_seconds: float = Field(default=10.0, gt=0, le=300)

    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    idempotency_retention_hours: float = Field(default=24.0, ge=24.0)
    idempotency_lock_seconds: float = Field(default=30.0, gt=0, le=3600)
    hold_expiry_interval_seconds: float = Field(default=1.0, gt=0, le=3600)
    rate_limit_per_second: int = Field(default=0, ge=0)
    rate_limit_burst: int = Field(default=0, ge=0)
    outbox_batch_size: int = Field(default=500, ge=1, le=10_000)
    outbox_poll_seconds: float = Field(default=0.5, gt=0, le=60)
    outbox_linger_seconds: float = Field(default=0.02, ge=0, le=5)
    outbox_retention_hours: float = Field(default=168.0, gt=0)
    group_commit_max_batch: int = Field(default=256, ge=1, le=4096)
    group_commit_max_in_flight: int = Field(default=2, ge=1, le=64)
    log_level: str = "INFO"

    def database_session_settings(self) -> dict[str, str]:
        """PostgreSQL settings of every API connection (milliseconds, as the server takes)."""
        return {
            "statement_timeout": str(int(self.database_statement_timeout_seconds * 1000)),
            "lock_timeout": str(int(self.database_lock_timeout_seconds * 1000)),
            "idle_in_transaction_session_timeout": str(
                int(self.database_idle_in_transaction_timeout_seconds * 1000)
            ),
        }


def load_settings(**overrides: object) -> Settings:
    """Read the environment, then apply command-line overrides that are not ``None``."""
    values = {name: value for name, value in overrides.items() if value is not None}
    return Settings(**values)  # type: ignore[arg-type]
