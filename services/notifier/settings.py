from __future__ import annotations

from pydantic import Field, SecretStr, field_validator, model_validator

from shared.settings import Seconds, SharedSettings


class NotifierSettings(SharedSettings):
    host: str = "127.0.0.1"
    port: int = Field(default=8003, ge=1, le=65535)
    public_url: str = Field(default="http://127.0.0.1:8003", description="base URL of this service")
    issuer_public_url: str = Field(default="http://127.0.0.1:8000",
                                   description="the tenants' base URL, used for links in alerts")
    digest_window: Seconds = Field(default=60.0, ge=0,
                                   description="alerts for one subscription within this window go out as one digest")
    remind_after: Seconds = Field(default=4 * 3600.0, gt=0,
                                  description="a reminder for a stuck invoice whose case is still open after this")
    retry_base: Seconds = Field(default=30.0, gt=0, description="first retry of a failed delivery (then doubling)")
    retry_cap: Seconds = Field(default=3600.0, gt=0, description="longest wait between two delivery attempts")
    max_attempts: int = Field(default=10, ge=1, le=100, description="attempts before a delivery is exhausted")
    delivery_lease: Seconds = Field(default=120.0, gt=0,
                                    description="a claimed delivery not finished by then is tried again")
    deliver_concurrency: int = Field(default=8, ge=1, le=128, description="deliveries in flight at once")
    poll_interval: Seconds = Field(default=1.0, gt=0, description="longest idle wait of the batcher and sender")
    metrics_interval: Seconds = Field(default=5.0, gt=0, description="how often the queue gauges are refreshed")
    webhook_timeout: Seconds = Field(default=10.0, gt=0, le=60,
                                     description="seconds a receiver has to answer 2xx (the whole exchange)")
    webhook_connect_timeout: Seconds = Field(default=3.0, gt=0, le=30)
    webhook_allow_private: str = Field(
        default="", description="comma-separated CIDRs webhook targets may be in although not public, e.g. "
                                "127.0.0.0/8,::1/128 for local development; empty: public addresses only")
    smtp_host: str = Field(default="127.0.0.1", description="SMTP server for e-mail alerts")
    smtp_port: int = Field(default=1025, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_tls: bool = Field(default=False, description="implicit TLS (SMTPS, usually port 465)")
    smtp_starttls: bool = Field(default=False, description="upgrade with STARTTLS (usually port 587)")
    smtp_timeout: Seconds = Field(default=15.0, gt=0, le=120)
    smtp_from: str = Field(default="Fapiao Sync <alerts@fapiao-sync.local>", max_length=200)
    secrets_key: SecretStr | None = Field(
        default=None, description="key that encrypts webhook signing secrets at rest (any 32+ characters); "
                                  "required outside development")
    ping_limit: int = Field(default=10, ge=1, le=10_000,
                            description="test messages (pings) per subscription in any minute; more get 429")
    relay_batch_size: int = Field(default=1000, ge=1, le=10_000)
    relay_poll_interval: float = Field(default=1.0, gt=0)
    auto_migrate: bool = Field(default=True, description="run Alembic migrations at start-up")

    @field_validator("webhook_allow_private")
    @classmethod
    def _cidrs(cls, v: str) -> str:
        from services.notifier.guard import parse_networks

        parse_networks(v)  # raises ValueError naming the bad entry
        return v

    @model_validator(mode="after")
    def _secrets_key(self) -> NotifierSettings:
        key = self.secrets_key.get_secret_value() if self.secrets_key else ""
        if self.env != "development" and len(key) < 32:
            raise ValueError("FAPIAO_SECRETS_KEY must be set to 32+ characters (it encrypts webhook signing "
                             "secrets at rest); only FAPIAO_ENV=development may leave it unset")
        if self.smtp_tls and self.smtp_starttls:
            raise ValueError("FAPIAO_SMTP_TLS and FAPIAO_SMTP_STARTTLS exclude each other")
        return self
