"""Real infrastructure for local runs and tests: Apache Kafka from Maven jars, embedded PostgreSQL."""

from fapiao.infra.kafka import KafkaBroker, KafkaCluster, ensure_kafka_jars
from fapiao.infra.postgres import PostgresServer
from fapiao.infra.procs import ServiceProcess, free_port, port_is_open

__all__ = ["KafkaBroker", "KafkaCluster", "PostgresServer", "ServiceProcess", "ensure_kafka_jars", "free_port",
           "port_is_open"]
