"""Kafka over SASL_SSL as FAPIAO_KAFKA_* asks for it: the producers, consumers, admin client, readiness probe and
offset reader the services build, against a real broker of this module's own whose only client listener is
SASL_SSL (PLAIN and SCRAM-SHA-512 users; a private CA made here signed its certificate, which names 127.0.0.1
only). Its controller listener stays PLAINTEXT on loopback; the suite's own broker is not involved."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fapiao.infra import KafkaBroker
from fapiao.infra.procs import free_ports
from shared.kafka import KafkaProbe, OffsetReader, ensure_topics, make_consumer, make_producer
from shared.settings import KafkaSecurity, SharedSettings
from shared.topics import Topic
from tests.harness import ARTIFACTS, InfraError, running_kafka_broker

# The service's user (PLAIN and SCRAM-SHA-512), and the broker's own login to its listener (inter-broker).
USER, PASSWORD = "fapiao_sync", "kafka-tls-test-password"
BROKER_USER, BROKER_PASSWORD = "broker", "kafka-tls-broker-password"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def home(request: pytest.FixtureRequest) -> Iterator[Path]:
    """This module's directory under .test-artifacts/ (kept when a test failed, for the broker's log): not the
    system temp dir, whose old pytest directories another session's pytest on this machine may delete."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="kafka-tls-", dir=ARTIFACTS))
    yield path
    if not request.session.testsfailed:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def certs(home: Path) -> Path:
    """A private CA, the broker's certificate it signed naming 127.0.0.1 only (and its key, PKCS#8, which the
    broker reads inline), and an unrelated CA."""
    home = home / "certs"
    home.mkdir()
    ca_key, ca = _ca("fapiao test CA")
    _, other_ca = _ca("someone else's CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    server = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    (home / "ca.pem").write_text(_pem(ca))
    (home / "other-ca.pem").write_text(_pem(other_ca))
    (home / "server.pem").write_text(_pem(server))
    (home / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return home


def _plain_jaas(users: dict[str, str]) -> str:
    accounts = " ".join(f'user_{name}="{password}"' for name, password in users.items())
    return ("org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{BROKER_USER}" password="{BROKER_PASSWORD}" {accounts};')


@pytest.fixture(scope="module")
def broker(home: Path, certs: Path) -> Iterator[KafkaBroker]:
    """A single KRaft node whose client and inter-broker listener is SASL_SSL: a PEM keystore given inline (no
    keytool), PLAIN users in its JAAS config, a SCRAM-SHA-512 user written into the metadata when the storage is
    formatted. Killed at the end of the module, whatever happened."""
    port, controller_port = free_ports(2)
    listener = {
        "ssl.keystore.type": "PEM",
        "ssl.keystore.certificate.chain": (certs / "server.pem").read_text(),
        "ssl.keystore.key": (certs / "server.key").read_text(),
        # The broker is a client of its own listener (inter-broker): it trusts the same CA.
        "ssl.truststore.type": "PEM",
        "ssl.truststore.certificates": (certs / "ca.pem").read_text(),
        "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-512",
        "sasl.mechanism.inter.broker.protocol": "PLAIN",
        "listener.name.sasl_ssl.plain.sasl.jaas.config": _plain_jaas({BROKER_USER: BROKER_PASSWORD, USER: PASSWORD}),
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
    }
    probe = KafkaSecurity(security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username=USER,
                          sasl_password=PASSWORD, ssl_cafile=str(certs / "ca.pem"))
    node = KafkaBroker(home / "kafka", port=port, controller_port=controller_port,
                       heap="384m", die_with_parent=True, listener="SASL_SSL", listener_properties=listener,
                       format_args=["--add-scram", f"SCRAM-SHA-512=[name={USER},password={PASSWORD}]"],
                       client_security=probe)
    try:
        with running_kafka_broker(node, timeout=60) as running:
            yield running
    except InfraError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def connect_as(certs: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Set FAPIAO_KAFKA_* as a user would for this broker (SASL_SSL, our user, our CA), with `changes` on top
    (None removes a setting); every client built afterwards reads them."""

    def set_env(**changes: str | None) -> None:
        wanted: dict[str, str | None] = {
            "SECURITY_PROTOCOL": "SASL_SSL", "SASL_MECHANISM": "PLAIN", "SASL_USERNAME": USER,
            "SASL_PASSWORD": PASSWORD, "SSL_CAFILE": str(certs / "ca.pem"), "SSL_CHECK_HOSTNAME": None}
        wanted.update({name.upper(): value for name, value in changes.items()})
        for name, value in wanted.items():
            if value is None:
                monkeypatch.delenv(f"FAPIAO_KAFKA_{name}", raising=False)
            else:
                monkeypatch.setenv(f"FAPIAO_KAFKA_{name}", value)

    return set_env


async def _refused(bootstrap: str, caplog: pytest.LogCaptureFixture) -> str:
    """Start a producer as the services build it; it must be refused, within the bound. Returns what aiokafka
    logged as the reason (its exception says only 'Unable to bootstrap'; the service's log says why)."""
    caplog.clear()
    producer = make_producer(bootstrap, request_timeout_ms=5_000)
    try:
        with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
            await asyncio.wait_for(producer.start(), 20)
    finally:
        await producer.stop()
    reasons = [r.getMessage() for r in caplog.records if r.name.startswith("aiokafka") and r.levelno >= logging.WARNING]
    assert reasons, "aiokafka logged no reason for the refusal"
    return "\n".join(reasons)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
async def test_the_services_clients_create_produce_and_consume_over_sasl_ssl(
        broker: KafkaBroker, connect_as: Callable[..., None], mechanism: str) -> None:
    connect_as(sasl_mechanism=mechanism)
    # What a service checks at start accepts the user's settings as they are.
    SharedSettings(database_url="postgresql://u:p@127.0.0.1/db", admin_token="x" * 20,
                   kafka_bootstrap=broker.bootstrap)
    topic = Topic(f"tls.{mechanism.lower()}.{uuid.uuid4().hex[:8]}", "a topic of this test's own")
    assert await ensure_topics(broker.bootstrap, [topic], partitions=2) == [topic.name]  # the admin client

    producer = make_producer(broker.bootstrap)
    await asyncio.wait_for(producer.start(), 20)
    try:
        for i in range(3):
            await asyncio.wait_for(producer.send_and_wait(topic.name, value=f"invoice {i}".encode(),
                                                          key=f"k{i}".encode()), 20)
    finally:
        await producer.stop()

    group = f"tls-{uuid.uuid4().hex[:8]}"
    consumer = make_consumer(broker.bootstrap, topic.name, group_id=group)
    await asyncio.wait_for(consumer.start(), 20)
    got: list[bytes] = []
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while len(got) < 3 and asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                got += [r.value for r in records]
        await asyncio.wait_for(consumer.commit(), 20)  # through the group coordinator, over the same listener
    finally:
        await consumer.stop()
    assert sorted(got) == [b"invoice 0", b"invoice 1", b"invoice 2"]

    # The readiness probe and the dashboard's offset reader get the same settings.
    probe = KafkaProbe(broker.bootstrap)
    reader = OffsetReader(broker.bootstrap)
    try:
        await probe.check()
        assert await reader.sizes([topic.name]) == {topic.name: 3}
        assert await reader.lags({group: [topic.name]}) == {group: 0}
    finally:
        await probe.close()
        await reader.close()


async def test_a_wrong_password_is_refused_and_the_log_says_so(
        broker: KafkaBroker, connect_as: Callable[..., None], caplog: pytest.LogCaptureFixture) -> None:
    connect_as(sasl_password="not-the-password")  # noqa: S106
    assert "SaslAuthenticationFailed" in (reason := await _refused(broker.bootstrap, caplog))
    assert "Invalid username or password" in reason
    connect_as(sasl_mechanism="SCRAM-SHA-512", sasl_password="not-the-password")  # noqa: S106
    assert "invalid credentials with SASL mechanism SCRAM-SHA-512" in await _refused(broker.bootstrap, caplog)
    connect_as(sasl_username="nobody")
    assert "SaslAuthenticationFailed" in await _refused(broker.bootstrap, caplog)
    # The readiness check (/readyz) is refused too, so a service never reports ready on bad credentials.
    connect_as(sasl_password="not-the-password")  # noqa: S106
    probe = KafkaProbe(broker.bootstrap, timeout=5)
    try:
        with pytest.raises(KafkaConnectionError):
            await probe.check()
    finally:
        await probe.close()


async def test_a_ca_that_did_not_sign_the_brokers_certificate_or_another_host_name_is_refused(
        broker: KafkaBroker, certs: Path, connect_as: Callable[..., None],
        caplog: pytest.LogCaptureFixture) -> None:
    connect_as(ssl_cafile=str(certs / "other-ca.pem"))
    reason = await _refused(broker.bootstrap, caplog)
    assert "CERTIFICATE_VERIFY_FAILED" in reason and "unable to get local issuer certificate" in reason
    # The system's trusted CAs (FAPIAO_KAFKA_SSL_CAFILE unset) did not sign it either.
    connect_as(ssl_cafile=None)
    assert "CERTIFICATE_VERIFY_FAILED" in await _refused(broker.bootstrap, caplog)
    # The right CA, but the broker reached as "localhost", a name its certificate does not carry.
    connect_as()
    as_localhost = f"localhost:{broker.port}"
    assert "Hostname mismatch, certificate is not valid for 'localhost'" in await _refused(as_localhost, caplog)
    # FAPIAO_KAFKA_SSL_CHECK_HOSTNAME=false checks the chain only, so the same connection is accepted.
    connect_as(ssl_check_hostname="false")
    probe = KafkaProbe(as_localhost, timeout=10)
    try:
        await probe.check()
    finally:
        await probe.close()


async def test_plaintext_against_the_tls_listener_fails(
        broker: KafkaBroker, connect_as: Callable[..., None], caplog: pytest.LogCaptureFixture) -> None:
    connect_as(security_protocol=None, sasl_mechanism=None, sasl_username=None, sasl_password=None, ssl_cafile=None)
    assert "closed" in await _refused(broker.bootstrap, caplog)
    # TLS without SASL does not get in either: the listener wants both, and the broker says so in its log.
    connect_as(security_protocol="SSL", sasl_mechanism=None, sasl_username=None, sasl_password=None)
    assert "closed" in await _refused(broker.bootstrap, caplog)
    assert "Unexpected Kafka request of type METADATA during SASL handshake" in broker.log_path.read_text()
