"""What the services hand aiokafka for a cluster of their own choosing (TLS/SASL from FAPIAO_KAFKA_*), how topics
are replicated on N brokers, and how `make up` lays out a local cluster. No broker needed: aiokafka keeps the
settings on its client objects, and nothing here connects."""

from __future__ import annotations

import ssl
from pathlib import Path

import certifi
import pytest
from pydantic import ValidationError

from fapiao import stack
from fapiao.infra.kafka import KafkaCluster
from shared.kafka import (
    OffsetReader,
    client_config,
    consumer_config,
    make_admin,
    make_consumer,
    make_producer,
    producer_config,
    replication_for,
    topic_settings,
)
from shared.settings import KafkaSecurity, SharedSettings

MANAGED = {
    "FAPIAO_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "FAPIAO_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "FAPIAO_KAFKA_SASL_USERNAME": "fapiao-svc",
    "FAPIAO_KAFKA_SASL_PASSWORD": "s3cret-from-the-vault",
    "FAPIAO_KAFKA_SSL_CAFILE": certifi.where(),
}


@pytest.fixture
def managed_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in MANAGED.items():
        monkeypatch.setenv(key, value)


def _security_of(client: object) -> tuple[str, str | None, str | None, str | None, object]:
    """What an aiokafka client object (AIOKafkaClient underneath every producer, consumer and admin) will use."""
    c = client
    return (c._security_protocol, c._sasl_mechanism, c._sasl_plain_username,  # type: ignore[attr-defined]
            c._sasl_plain_password, c._ssl_context)  # type: ignore[attr-defined]


def test_plaintext_by_default_adds_nothing_to_the_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in MANAGED:
        monkeypatch.delenv(key, raising=False)
    assert client_config("k1:9092,k2:9092") == {"bootstrap_servers": "k1:9092,k2:9092"}
    assert "security_protocol" not in producer_config("k1:9092")


async def test_tls_and_sasl_settings_reach_every_client_the_services_build(managed_cluster: None) -> None:
    for config in (client_config("k:9096"), producer_config("k:9096"), consumer_config("k:9096", group_id="g")):
        assert config["security_protocol"] == "SASL_SSL"
        assert config["sasl_mechanism"] == "SCRAM-SHA-512"
        assert config["sasl_plain_username"] == "fapiao-svc"
        assert config["sasl_plain_password"] == MANAGED["FAPIAO_KAFKA_SASL_PASSWORD"]
        assert isinstance(config["ssl_context"], ssl.SSLContext) and config["ssl_context"].check_hostname
    producer_settings = producer_config("k:9096")
    assert producer_settings["acks"] == "all" and producer_settings["enable_idempotence"] is True, "still safe"

    producer, consumer = make_producer("k:9096"), make_consumer("k:9096", "t", group_id="g")
    admin = make_admin("k:9096")
    reader = OffsetReader("k:9096")
    try:
        for client in (producer.client, consumer._client, admin._client):  # type: ignore[attr-defined]
            protocol, mechanism, user, password, context = _security_of(client)
            assert (protocol, mechanism, user) == ("SASL_SSL", "SCRAM-SHA-512", "fapiao-svc")
            assert password == MANAGED["FAPIAO_KAFKA_SASL_PASSWORD"]
            assert isinstance(context, ssl.SSLContext)
        assert reader.security.security_protocol == "SASL_SSL"
    finally:
        await producer.stop()
        await consumer.stop()
        await admin.close()


def test_a_half_configured_cluster_fails_the_service_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"database_url": "postgresql://u:p@h/db", "admin_token": "x" * 20, "kafka_bootstrap": "k:9092"}
    monkeypatch.setenv("FAPIAO_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("FAPIAO_KAFKA_SASL_MECHANISM", "PLAIN")
    with pytest.raises(ValidationError, match="FAPIAO_KAFKA_SASL_USERNAME and FAPIAO_KAFKA_SASL_PASSWORD"):
        SharedSettings(**base)
    monkeypatch.setenv("FAPIAO_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    with pytest.raises(ValidationError, match="choose SASL_SSL"):
        SharedSettings(**base)
    monkeypatch.delenv("FAPIAO_KAFKA_SASL_MECHANISM")
    monkeypatch.setenv("FAPIAO_KAFKA_SSL_CAFILE", certifi.where())
    with pytest.raises(ValidationError, match="choose SSL"):
        KafkaSecurity()
    monkeypatch.setenv("FAPIAO_KAFKA_SECURITY_PROTOCOL", "TLS")
    with pytest.raises(ValidationError):
        KafkaSecurity()


@pytest.mark.parametrize(("brokers", "factor", "min_isr"), [(1, 1, 1), (2, 2, 1), (3, 3, 2), (5, 3, 2)])
def test_topics_get_up_to_three_copies_and_two_in_sync_at_three(brokers: int, factor: int, min_isr: int) -> None:
    assert replication_for(brokers) == (factor, min_isr)
    assert topic_settings(factor) == {"min.insync.replicas": str(min_isr), "unclean.leader.election.enable": "false"}


def test_a_three_node_plan_gives_each_node_its_id_dir_ports_and_the_whole_quorum(tmp_path: Path) -> None:
    cluster = KafkaCluster.plan(tmp_path, ports=[(19092, 19093), (19094, 19095), (19096, 19097)])
    assert cluster.bootstrap == "127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096"
    assert [n.data_dir for n in cluster.nodes] == [tmp_path / f"node-{i}" for i in (1, 2, 3)]
    props = dict(line.split("=", 1) for line in cluster.node(2).properties().splitlines())
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19094,CONTROLLER://127.0.0.1:19095"
    assert props["log.dirs"] == str(tmp_path / "node-2" / "data")
    for key in ("default.replication.factor", "offsets.topic.replication.factor",
                "transaction.state.log.replication.factor"):
        assert props[key] == "3", key
    assert props["min.insync.replicas"] == props["transaction.state.log.min.isr"] == "2"
    assert props["unclean.leader.election.enable"] == "false"

    single = KafkaCluster.plan(tmp_path, ports=[(19092, 19093)])
    assert single.node(1).data_dir == tmp_path, "one broker keeps the data dir it always had"
    assert "controller.quorum.voters=1@127.0.0.1:19093" in single.node(1).properties()
    with pytest.raises(ValueError, match="must all differ"):
        KafkaCluster.plan(tmp_path, ports=[(19092, 19093), (19093, 19094)])


def test_make_up_lays_out_n_brokers_and_kafka_stands_for_all_of_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAPIAO_KAFKA_PORT", "29092")
    monkeypatch.setenv("FAPIAO_KAFKA_CONTROLLER_PORT", "29093")
    assert stack._kafka_ports(1) == [(29092, 29093)]
    assert stack._kafka_ports(3) == [(29092, 29093), (29094, 29095), (29096, 29097)]
    monkeypatch.setenv("FAPIAO_KAFKA_BROKERS", "0")
    with pytest.raises(RuntimeError, match="FAPIAO_KAFKA_BROKERS"):
        stack._kafka_brokers()

    def node(i: int) -> dict[str, object]:
        return {"pid": 1, "marker": f"node-{i}/server.properties", "ports": [29090 + 2 * i, 29091 + 2 * i]}

    state = {"processes": {"kafka-1": node(1), "kafka-2": node(2), "kafka-3": node(3),
                           "sync": {"pid": 2, "marker": "services.sync", "ports": [1], "module": "services.sync"}}}
    assert stack._components(state, "kafka") == ["kafka-1", "kafka-2", "kafka-3"]
    assert stack._components(state, "kafka-2") == ["kafka-2"]
    assert stack._components(state, "sync") == ["sync"]
    with pytest.raises(stack.StackError, match="no component 'kafka-4'"):
        stack._components(state, "kafka-4")
    single = {"processes": {"kafka": node(1)}}
    assert stack._components(single, "kafka") == ["kafka"]
