"""FAPIAO_DATABASE_SSL*: checked when a service starts, and handed to asyncpg and libpq as the mode says. The real
connections (verify-full accepted and refused, require, disable, psql) are in tests/integration/test_database_tls.py."""

from __future__ import annotations

import ssl
from pathlib import Path

import certifi
import pytest
from pydantic import ValidationError

from fapiao import backup
from shared.settings import CoreSettings, DatabaseTls

TLS_ENV = ("FAPIAO_DATABASE_SSLMODE", "FAPIAO_DATABASE_SSLROOTCERT", "FAPIAO_DATABASE_SSLCERT",
           "FAPIAO_DATABASE_SSLKEY")
BASE = {"database_url": "postgresql://u:p@db.example:5432/fapiao", "admin_token": "a-real-admin-token-0123456789"}


@pytest.fixture(autouse=True)
def no_tls_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in TLS_ENV:
        monkeypatch.delenv(key, raising=False)


def _start_fails(monkeypatch: pytest.MonkeyPatch, match: str, **env: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(f"FAPIAO_DATABASE_{key.upper()}", value)
    with pytest.raises(ValidationError, match=match):
        CoreSettings(**BASE)
    for key in env:
        monkeypatch.delenv(f"FAPIAO_DATABASE_{key.upper()}")


def test_a_half_configured_tls_fails_the_service_at_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _start_fails(monkeypatch, "verify-full needs FAPIAO_DATABASE_SSLROOTCERT", sslmode="verify-full")
    _start_fails(monkeypatch, "verify-ca needs FAPIAO_DATABASE_SSLROOTCERT", sslmode="verify-ca")
    _start_fails(monkeypatch, "does not check the server's certificate", sslmode="require",
                 sslrootcert=certifi.where())
    _start_fails(monkeypatch, "SSLCERT and FAPIAO_DATABASE_SSLKEY go together", sslmode="verify-full",
                 sslrootcert=certifi.where(), sslcert=certifi.where())
    _start_fails(monkeypatch, "a client certificate needs require", sslcert=certifi.where(), sslkey=certifi.where())
    _start_fails(monkeypatch, "no such file", sslmode="verify-full", sslrootcert=str(tmp_path / "missing.pem"))
    _start_fails(monkeypatch, "sslmode", sslmode="verify_full")  # libpq spells it with a hyphen
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("this is not a certificate\n")
    _start_fails(monkeypatch, "cannot load a certificate", sslmode="verify-full", sslrootcert=str(not_pem))


def test_tls_in_the_url_is_refused_for_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLAlchemy would hand ?sslmode= to asyncpg.connect(), which has no such argument: say where TLS goes instead.
    with pytest.raises(ValidationError, match="carries sslmode, sslrootcert: set TLS with FAPIAO_DATABASE_SSLMODE"):
        CoreSettings(**{**BASE, "database_url": BASE["database_url"] + "?sslrootcert=/ca.pem&sslmode=verify-full"})


def test_each_mode_checks_what_libpq_would(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DatabaseTls().ssl_context() is None, "unset: asyncpg's own default (prefer)"
    monkeypatch.setenv("FAPIAO_DATABASE_SSLMODE", "disable")
    assert DatabaseTls().ssl_context() is False
    monkeypatch.setenv("FAPIAO_DATABASE_SSLMODE", "require")
    ctx = DatabaseTls().ssl_context()
    assert isinstance(ctx, ssl.SSLContext) and (ctx.verify_mode, ctx.check_hostname) == (ssl.CERT_NONE, False)
    monkeypatch.setenv("FAPIAO_DATABASE_SSLROOTCERT", certifi.where())
    for mode, hostname in (("verify-ca", False), ("verify-full", True)):
        monkeypatch.setenv("FAPIAO_DATABASE_SSLMODE", mode)
        ctx = DatabaseTls().ssl_context()
        assert isinstance(ctx, ssl.SSLContext)
        assert (ctx.verify_mode, ctx.check_hostname) == (ssl.CERT_REQUIRED, hostname)
        assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
        assert ctx.get_ca_certs(), "the CA bundle was loaded"
    assert CoreSettings(**BASE).database_url.startswith("postgresql+asyncpg://")


def test_pg_dump_and_psql_get_the_same_settings_as_libpq_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAPIAO_DATABASE_SSLMODE", "verify-full")
    monkeypatch.setenv("FAPIAO_DATABASE_SSLROOTCERT", certifi.where())
    uri, env = backup._libpq(BASE["database_url"])
    assert (env["PGSSLMODE"], env["PGSSLROOTCERT"]) == ("verify-full", certifi.where())
    assert "PGSSLCERT" not in env and "sslmode" not in uri
    monkeypatch.setenv("FAPIAO_DATABASE_SSLMODE", "verify-fully")
    with pytest.raises(backup.BackupError, match="PostgreSQL TLS settings"):
        backup._libpq(BASE["database_url"])
