"""Kafka over SASL_SSL as FAPIAO_KAFKA_* asks for it: the producers, consumers, admin client, readiness probe and
offset reader the services build, against a real broker of this module's own whose only client listener is
SASL_SSL (PLAIN and SCRAM-SHA-512 users; a private CA made here signed its certificate, which names 127.0.0.1
only), and mutual TLS against a second one whose listener is SSL with client certificates required. Their
controller listeners stay PLAINTEXT on loopback; the suite's own broker is not involved."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError

from fapiao.infra import KafkaBroker
from fapiao.infra.procs import free_ports
from shared.kafka import KafkaProbe, OffsetReader, ensure_topics, make_consumer, make_producer
from shared.settings import KafkaSecurity, SharedSettings
from shared.topics import Topic
from tests.harness import ARTIFACTS, InfraError, running_kafka_broker
from tests.harness import certs as certs_lib

# The service's user (PLAIN and SCRAM-SHA-512), and the broker's own login to its listener (inter-broker).
USER, PASSWORD = "fapiao_sync", "kafka-tls-test-password"
BROKER_USER, BROKER_PASSWORD = "broker", "kafka-tls-broker-password"
CLIENT_KEY_PASSWORD = "kafka-tls-client-key-password"  # noqa: S105 - the mutual-TLS client key's, made here








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
    """A private CA; the broker's certificate it signed, naming 127.0.0.1 only (its key unencrypted PKCS#8, which
    the broker reads inline); a client certificate it signed for mutual TLS (its key encrypted with
    CLIENT_KEY_PASSWORD); an unrelated CA and a client certificate of its own."""
    home = home / "certs"
    home.mkdir()
    ca_key, ca = certs_lib.ca("fapiao test CA")
    other_key, other_ca = certs_lib.ca("someone else's CA")
    key, server = certs_lib.signed("127.0.0.1", ca_key, ca, certs_lib.LOOPBACK)
    client_key, client = certs_lib.signed(USER, ca_key, ca)
    stranger_key, stranger = certs_lib.signed(USER, other_key, other_ca)
    (home / "ca.pem").write_text(certs_lib.pem(ca))
    (home / "other-ca.pem").write_text(certs_lib.pem(other_ca))
    (home / "server.pem").write_text(certs_lib.pem(server))
    certs_lib.write_key(home / "server.key", key)
    (home / "client.pem").write_text(certs_lib.pem(client))
    certs_lib.write_key(home / "client.key", client_key, CLIENT_KEY_PASSWORD)
    (home / "stranger.pem").write_text(certs_lib.pem(stranger))
    certs_lib.write_key(home / "stranger.key", stranger_key)
    return home


def _keystores(certs: Path) -> dict[str, str]:
    """The broker's certificate and key as a PEM keystore given inline (no keytool), and the CA it trusts: the
    broker is a client of its own listener (inter-broker), and with mutual TLS it checks the clients' too."""
    return {
        "ssl.keystore.type": "PEM",
        "ssl.keystore.certificate.chain": (certs / "server.pem").read_text(),
        "ssl.keystore.key": (certs / "server.key").read_text(),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.certificates": (certs / "ca.pem").read_text(),
    }


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
        **_keystores(certs),
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


@pytest.fixture(scope="module")
def mtls_broker(home: Path, certs: Path) -> Iterator[KafkaBroker]:
    """A second node whose client listener is SSL with client certificates required (mutual TLS, no SASL):
    what FAPIAO_KAFKA_SECURITY_PROTOCOL=SSL with FAPIAO_KAFKA_SSL_CERTFILE and _KEYFILE is for."""
    port, controller_port = free_ports(2)
    probe = KafkaSecurity(security_protocol="SSL", ssl_cafile=str(certs / "ca.pem"),
                          ssl_certfile=str(certs / "client.pem"), ssl_keyfile=str(certs / "client.key"),
                          ssl_key_password=CLIENT_KEY_PASSWORD)
    node = KafkaBroker(home / "kafka-mtls", port=port, controller_port=controller_port, heap="384m",
                       die_with_parent=True, listener="SSL",
                       listener_properties={**_keystores(certs), "ssl.client.auth": "required"},
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


async def _round_trip(bootstrap: str) -> None:
    """What the services do with Kafka, with the clients they build from FAPIAO_KAFKA_*: create a topic (the admin
    client), produce, consume in a group and commit, probe readiness, read sizes and lags (the dashboard)."""
    topic = Topic(f"tls.{uuid.uuid4().hex[:8]}", "a topic of this test's own")
    assert await ensure_topics(bootstrap, [topic], partitions=2) == [topic.name]

    producer = make_producer(bootstrap)
    await asyncio.wait_for(producer.start(), 20)
    try:
        for i in range(3):
            await asyncio.wait_for(producer.send_and_wait(topic.name, value=f"invoice {i}".encode(),
                                                          key=f"k{i}".encode()), 20)
    finally:
        await producer.stop()

    group = f"tls-{uuid.uuid4().hex[:8]}"
    consumer = make_consumer(bootstrap, topic.name, group_id=group)
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
    probe = KafkaProbe(bootstrap)
    reader = OffsetReader(bootstrap)
    try:
        await probe.check()
        assert await reader.sizes([topic.name]) == {topic.name: 3}
        assert await reader.lags({group: [topic.name]}) == {group: 0}
    finally:
        await probe.close()
        await reader.close()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
async def test_the_services_clients_create_produce_and_consume_over_sasl_ssl(
        broker: KafkaBroker, connect_as: Callable[..., None], mechanism: str) -> None:
    connect_as(sasl_mechanism=mechanism)
    # What a service checks at start accepts the user's settings as they are.
    SharedSettings(database_url="postgresql://u:p@127.0.0.1/db", admin_token="x" * 20,
                   kafka_bootstrap=broker.bootstrap)
    await _round_trip(broker.bootstrap)


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


async def test_mutual_tls_with_the_services_certificate_and_only_with_it(
        mtls_broker: KafkaBroker, certs: Path, connect_as: Callable[..., None],
        caplog: pytest.LogCaptureFixture) -> None:
    mutual = {"security_protocol": "SSL", "sasl_mechanism": None, "sasl_username": None, "sasl_password": None,
              "ssl_certfile": str(certs / "client.pem"), "ssl_keyfile": str(certs / "client.key"),
              "ssl_key_password": CLIENT_KEY_PASSWORD}
    connect_as(**mutual)
    await _round_trip(mtls_broker.bootstrap)
    # No client certificate, or one that the broker's CA did not sign: the broker ends the connection (under
    # TLS 1.3 the client learns it only at its first request, so aiokafka says "closed", not why).
    connect_as(**{**mutual, "ssl_certfile": None, "ssl_keyfile": None, "ssl_key_password": None})
    assert "closed" in await _refused(mtls_broker.bootstrap, caplog)
    connect_as(**{**mutual, "ssl_certfile": str(certs / "stranger.pem"), "ssl_keyfile": str(certs / "stranger.key"),
                  "ssl_key_password": None})
    assert "closed" in await _refused(mtls_broker.bootstrap, caplog)
