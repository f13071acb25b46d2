"""Settings common to every service: environment variables with the FAPIAO_ prefix."""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["PLACEHOLDER_SECRETS", "CoreSettings", "DatabaseTls", "KafkaSecurity", "Seconds", "SharedSettings",
           "format_duration", "normalise_database_url", "parse_duration"]

PLACEHOLDER_SECRETS = frozenset({"", "change-me", "changeme", "secret", "admin", "dev-admin-token", "password"})


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any) -> Any:
    """'90', '90s', '1.5m', '2h', '500ms' -> seconds. Numbers pass through."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError("a duration such as 30, 30s, 10m, 2h or 500ms")
        return float(match[1]) * _UNIT[match[2]]
    return value


def format_duration(seconds: float) -> str:
    """Seconds as people read them: 4.2 s, 38 s, 4 min 12 s, 2 h 5 min."""
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {(s % 3600) // 60} min"


Seconds = Annotated[float, BeforeValidator(parse_duration)]
"""A duration setting in seconds, also written with a unit: FAPIAO_STUCK_AFTER=10m."""


def normalise_database_url(url: str) -> str:
    """Accept the libpq spellings and hand SQLAlchemy the asyncpg driver."""
    for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://", "postgresql+psycopg://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix):]
    return url


class CoreSettings(BaseSettings):
    """What every process needs. Built in create_app(), never at import time, so tests can pass their own."""

    model_config = SettingsConfigDict(env_prefix="FAPIAO_", extra="ignore", frozen=True)

    env: Literal["development", "test", "production"] = "development"
    database_url: str = Field(description="PostgreSQL DSN; the local stack fills it in")
    admin_token: SecretStr = Field(description="bearer token for /admin endpoints")
    operator_tokens: str = Field(default="", description=(
        "named operators: name:<sha256 hex of the token>, comma-separated (fapiao operators token NAME makes one); "
        "their changes are audited under their names"))
    operator_tokens_file: str | None = Field(default=None, description=(
        "a file of named operators, one name:<sha256 hex> a line, read again within a second of a change "
        "(`fapiao operators add/revoke` edit it); `make up` uses .run/operators"))
    log_level: str = "INFO"
    log_json: bool = True
    db_pool_size: int = Field(default=10, ge=1, le=200,
                              description="connections for API requests (as many again as overflow)")
    db_pool_timeout: Seconds = Field(default=3.0, gt=0, le=60,
                                     description="longest wait of a request for a pooled connection; then 503")
    db_worker_pool_size: int = Field(default=5, ge=1, le=100,
                                     description="connections of the background loops (as many again as overflow)")
    db_statement_timeout_ms: int = Field(default=30_000, ge=100)

    @field_validator("database_url")
    @classmethod
    def _dsn(cls, v: str) -> str:
        v = normalise_database_url(v.strip())
        if not v.startswith("postgresql+asyncpg://"):
            raise ValueError("must be a PostgreSQL URL (postgresql://user:pass@host:port/db)")
        query = v.partition("?")[2]
        in_url = sorted({p.partition("=")[0] for p in query.split("&") if p} & _TLS_QUERY)
        if in_url:
            # asyncpg (through SQLAlchemy) would refuse libpq's names at the first connection, pg_dump would
            # read them: one place for TLS, the FAPIAO_DATABASE_SSL* settings, keeps every client the same.
            raise ValueError(f"carries {', '.join(in_url)}: set TLS with FAPIAO_DATABASE_SSLMODE, "
                             "FAPIAO_DATABASE_SSLROOTCERT, FAPIAO_DATABASE_SSLCERT and FAPIAO_DATABASE_SSLKEY instead")
        return v

    @field_validator("operator_tokens")
    @classmethod
    def _operators(cls, v: str) -> str:
        from shared.audit import parse_operator_tokens

        parse_operator_tokens(v)  # ValueError names the entry at fault
        return v

    @field_validator("operator_tokens_file")
    @classmethod
    def _operators_file(cls, v: str | None) -> str | None:
        from shared.audit import read_operator_file

        if v:
            try:
                read_operator_file(v)  # ValueError names the line at fault
            except OSError as exc:
                raise ValueError(f"cannot read it: {exc.strerror or exc}") from None
        return v or None

    @model_validator(mode="after")
    def _database_tls_is_valid(self) -> CoreSettings:
        # Read again whenever an engine is built (shared.db.make_engine); checked here so that a wrong mode or a
        # missing certificate stops the service at start, not at its first connection.
        try:
            DatabaseTls().ssl_context()
        except ValidationError as exc:
            raise ValueError(f"PostgreSQL TLS settings: {exc}") from None
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"PostgreSQL TLS settings: cannot load a certificate or key: {exc}") from None
        return self

    @model_validator(mode="after")
    def _no_placeholder_secrets(self) -> CoreSettings:
        token = self.admin_token.get_secret_value()
        if self.env != "development" and (token.lower() in PLACEHOLDER_SECRETS or len(token) < 16):
            raise ValueError(
                "FAPIAO_ADMIN_TOKEN is a placeholder or shorter than 16 characters; "
                "set a real secret (only FAPIAO_ENV=development tolerates that)"
            )
        return self


class SharedSettings(CoreSettings):
    """Settings of the services that speak Kafka (all but the simulated tax store)."""

    kafka_bootstrap: str = Field(description="comma-separated host:port list")
    topic_prefix: str = Field(default="", description="prefix for every topic and consumer group name (test isolation)")
    kafka_partitions: int = Field(default=6, ge=1, le=256)
    kafka_replication_factor: int | None = Field(
        default=None, ge=1, le=5,
        description="replication factor of created topics; unset: min(3, the brokers the cluster has)")
    kafka_request_timeout_ms: int = Field(default=10_000, ge=1_000)

    @model_validator(mode="after")
    def _kafka_security_is_valid(self) -> SharedSettings:
        # The clients read KafkaSecurity when they are built (shared.kafka.client_config); check it at start-up
        # so a wrong FAPIAO_KAFKA_SECURITY_PROTOCOL fails the service at once, not its first reconnect.
        try:
            KafkaSecurity()
        except ValidationError as exc:
            raise ValueError(f"Kafka TLS/SASL settings: {exc}") from None
        return self


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaSecurity(BaseSettings):
    """How to reach a cluster that wants TLS and/or SASL (a managed one, say): FAPIAO_KAFKA_SECURITY_PROTOCOL,
    FAPIAO_KAFKA_SASL_*, FAPIAO_KAFKA_SSL_*. Every Kafka client the services build gets these
    (shared.kafka.client_config); the default, PLAINTEXT, adds nothing."""

    model_config = SettingsConfigDict(env_prefix="FAPIAO_KAFKA_", extra="ignore", frozen=True)

    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = Field(default=None, description="required with SASL_*")
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = Field(default=None, description="CA bundle (PEM); unset: the system's trusted CAs")
    ssl_certfile: str | None = Field(default=None, description="client certificate (PEM), for mutual TLS")
    ssl_keyfile: str | None = Field(default=None, description="the client certificate's private key (PEM)")
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecurity:
        sasl = [n for n in ("sasl_mechanism", "sasl_username", "sasl_password") if getattr(self, n) is not None]
        if self.uses_sasl and len(sasl) < 3:
            raise ValueError(f"FAPIAO_KAFKA_SECURITY_PROTOCOL={self.security_protocol} needs "
                             "FAPIAO_KAFKA_SASL_MECHANISM, FAPIAO_KAFKA_SASL_USERNAME and FAPIAO_KAFKA_SASL_PASSWORD")
        if sasl and not self.uses_sasl:
            raise ValueError(f"FAPIAO_KAFKA_{sasl[0].upper()} is set but FAPIAO_KAFKA_SECURITY_PROTOCOL is "
                             f"{self.security_protocol}: choose SASL_SSL (or SASL_PLAINTEXT)")
        tls = [n for n in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password")
               if getattr(self, n) is not None]
        if tls and not self.uses_tls:
            raise ValueError(f"FAPIAO_KAFKA_{tls[0].upper()} is set but FAPIAO_KAFKA_SECURITY_PROTOCOL is "
                             f"{self.security_protocol}: choose SSL (or SASL_SSL)")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("FAPIAO_KAFKA_SSL_CERTFILE and FAPIAO_KAFKA_SSL_KEYFILE go together")
        return self


SslMode = Literal["disable", "prefer", "require", "verify-ca", "verify-full"]
_TLS_QUERY = {"ssl", "sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "sslpassword"}


class DatabaseTls(BaseSettings):
    """TLS to PostgreSQL: FAPIAO_DATABASE_SSLMODE and the certificate paths, with libpq's names and meanings.
    Every engine the services build gets them (shared.db.make_engine), and so do pg_dump and psql in the backup
    tool (`libpq_env`). Unset, nothing is added: the driver's default, `prefer`, applies."""

    model_config = SettingsConfigDict(env_prefix="FAPIAO_DATABASE_", extra="ignore", frozen=True)

    sslmode: SslMode | None = Field(default=None, description=(
        "disable | prefer | require (encrypted, server not checked) | verify-ca (and the server's certificate "
        "chains to SSLROOTCERT) | verify-full (and it names the host in the URL)"))
    sslrootcert: str | None = Field(default=None, description=(
        "CA bundle (PEM) the server's certificate must chain to, or 'system' for the system's trusted CAs; "
        "required by verify-ca and verify-full"))
    sslcert: str | None = Field(default=None, description="client certificate (PEM), for certificate authentication")
    sslkey: str | None = Field(default=None, description="the client certificate's private key (PEM, unencrypted)")

    @model_validator(mode="after")
    def _consistent(self) -> DatabaseTls:
        mode = self.sslmode
        if mode in ("verify-ca", "verify-full") and not self.sslrootcert:
            raise ValueError(f"FAPIAO_DATABASE_SSLMODE={mode} needs FAPIAO_DATABASE_SSLROOTCERT: the CA (PEM) that "
                             "signed the server's certificate, or 'system' for the system's trusted CAs")
        if self.sslrootcert and mode not in ("verify-ca", "verify-full"):
            raise ValueError(f"FAPIAO_DATABASE_SSLROOTCERT is set but FAPIAO_DATABASE_SSLMODE is {mode or 'unset'}, "
                             "which does not check the server's certificate: choose verify-full (or verify-ca)")
        client = [n for n in ("sslcert", "sslkey") if getattr(self, n)]
        if client and mode not in ("require", "verify-ca", "verify-full"):
            raise ValueError(f"FAPIAO_DATABASE_{client[0].upper()} is set but FAPIAO_DATABASE_SSLMODE is "
                             f"{mode or 'unset'}: a client certificate needs require, verify-ca or verify-full")
        if len(client) == 1:
            raise ValueError("FAPIAO_DATABASE_SSLCERT and FAPIAO_DATABASE_SSLKEY go together")
        for name in ("sslrootcert", "sslcert", "sslkey"):
            path = getattr(self, name)
            if path and not (name == "sslrootcert" and path == "system") and not Path(path).is_file():
                raise ValueError(f"FAPIAO_DATABASE_{name.upper()}={path}: no such file")
        return self

    def ssl_context(self) -> ssl.SSLContext | bool | str | None:
        """What asyncpg's `ssl` argument gets: None (not configured), False (disable), 'prefer' (TLS if the
        server offers it, unverified), or a context that insists on TLS and checks what the mode says."""
        if self.sslmode is None:
            return None
        if self.sslmode == "disable":
            return False
        if self.sslmode == "prefer":
            return "prefer"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = self.sslmode == "verify-full"
        if self.sslmode == "require":
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx.verify_mode = ssl.CERT_REQUIRED
            if self.sslrootcert == "system":
                ctx.load_default_certs()
            else:
                ctx.load_verify_locations(cafile=self.sslrootcert)
        if self.sslcert:
            ctx.load_cert_chain(self.sslcert, keyfile=self.sslkey)
        return ctx

    def libpq_env(self) -> dict[str, str]:
        """The same settings for libpq's tools (pg_dump, psql), as their environment variables."""
        names = {"sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY"}
        return {env: str(getattr(self, field)) for field, env in names.items() if getattr(self, field)}
