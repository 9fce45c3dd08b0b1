"""Central's configuration, from environment variables (12-factor, as docker-compose sets them)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every setting is an environment variable of the same name in upper case."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    database_url: SecretStr = Field(description="postgresql://user:pass@host:5432/db")
    amqp_url: SecretStr = Field(description="amqp://user:pass@host:5672/")
    s3_endpoint: str = Field(description="Object storage host:port, no scheme.")
    s3_access_key: SecretStr
    s3_secret_key: SecretStr
    s3_secure: bool = Field(False, description="Use HTTPS to reach object storage.")
    s3_region: str = Field("us-east-1", description="Region used to sign presigned URLs.")
    s3_public_endpoint: str | None = Field(
        None,
        description="host:port agents and browsers use for presigned URLs, if not s3_endpoint.",
    )
    rabbitmq_management_url: SecretStr | None = Field(
        None,
        description="RabbitMQ management API with an administrator's credentials, e.g. "
        "http://admin:pass@rabbitmq:15672; needed to enrol agents (per-agent broker users).",
    )
    rabbitmq_vhost: str = Field("/", description="The virtual host agents and central use.")
    agent_amqp_url: str | None = Field(
        None,
        description="Broker URL handed to enrolled agents, without credentials "
        "(e.g. amqps://central.example.gov.br:5671/); default: AMQP_URL without credentials.",
    )
    enrolment_token_ttl_s: int = Field(
        24 * 3600, ge=300, le=30 * 24 * 3600, description="Lifetime of a one-time token."
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0")
    gtvision_secret_key: SecretStr = Field(
        description="Signs session tokens; at least 32 characters.", min_length=32
    )
    gtvision_admin_email: str | None = Field(
        None, description="First administrator, created at start-up if missing."
    )
    gtvision_admin_password: SecretStr | None = None
    upload_url_ttl_s: int = Field(300, ge=30, le=3600, description="Presigned PUT lifetime.")
    multipart_threshold_bytes: int = Field(
        128 * 1024**2,
        ge=5 * 1024**2,
        description="Agents' uploads larger than this go in parts (multipart upload).",
    )
    multipart_part_bytes: int = Field(
        16 * 1024**2,
        ge=5 * 1024**2,
        le=5 * 1024**3,
        description="Size of each part of a multipart upload (S3: 5 MiB to 5 GiB; the last "
        "part may be smaller).",
    )
    db_pool_max: int = Field(10, ge=1, le=200)
