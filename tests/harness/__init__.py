"""What the tests run against, one concern per module; tests/conftest.py only registers fixtures over these.

infra       the suite's PostgreSQL and Kafka, a 3-broker cluster, a broker of a test's own, fresh databases,
            the admin token
issuer      the issuer in this process, its settings and tenants
polling     eventually(), reading a topic, one metric
processes   real service processes (fapiao.infra.ServiceProcess) told the test infrastructure
pipelines   Pipeline / ReconPipeline: the issuer plus real processes, faults, statuses, ledger, mail
replicas    plan_replicas / Deployment: N processes of the issuer, sync, reconciler, notifier on one database
webhooks    a real webhook receiver, serving an ASGI app over HTTP
"""

from tests.harness.infra import (
    ADMIN,
    ADMIN_TOKEN,
    ARTIFACTS,
    REPO,
    Infra,
    InfraError,
    fresh_database,
    running_infra,
    running_kafka_broker,
    running_kafka_cluster,
)
from tests.harness.issuer import RunningIssuer, Tenant, issuer_settings, running_issuer, start_issuer
from tests.harness.pipelines import (
    NOTIFIER_ENV,
    RECONCILER_ENV,
    SYNC_ENV,
    Pipeline,
    ReconPipeline,
    ReconProcesses,
    plan_pipeline,
    plan_recon,
    start_all,
    stop_all,
)
from tests.harness.polling import eventually, metric, read_topic
from tests.harness.processes import ServiceProcess, process_env, service_process
from tests.harness.webhooks import Received, Receiver, serve_app

__all__ = [
    "ADMIN", "ADMIN_TOKEN", "ARTIFACTS", "NOTIFIER_ENV", "RECONCILER_ENV", "REPO", "SYNC_ENV", "Infra", "InfraError",
    "Pipeline", "Received", "Receiver", "ReconPipeline", "ReconProcesses", "RunningIssuer", "ServiceProcess", "Tenant",
    "eventually", "fresh_database", "issuer_settings", "metric", "plan_pipeline", "plan_recon", "process_env",
    "read_topic", "running_infra", "running_issuer", "running_kafka_broker", "running_kafka_cluster", "serve_app",
    "service_process", "start_all", "start_issuer", "stop_all",
]
