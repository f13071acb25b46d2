"""Real service processes for the tests: the one ServiceProcess (fapiao.infra), told the test infrastructure."""

from __future__ import annotations

from fapiao.infra import ServiceProcess, free_port
from fapiao.infra.procs import clean_environ
from tests.harness.infra import ADMIN_TOKEN, Infra, as_service

__all__ = ["ServiceProcess", "process_env", "service_process"]


def process_env(infra: Infra, **extra: str) -> dict[str, str]:
    """A clean environment for a service process: the test infrastructure, never the developer's FAPIAO_*."""
    return {
        **clean_environ(),
        "FAPIAO_DATABASE_URL": infra.database_url, "FAPIAO_KAFKA_BOOTSTRAP": infra.kafka_bootstrap,
        "FAPIAO_ADMIN_TOKEN": ADMIN_TOKEN, "FAPIAO_ENV": "test", "FAPIAO_LOG_JSON": "false",
        "FAPIAO_STACK_DIR": str(infra.workdir / "no-stack"), "PYTHONUNBUFFERED": "1",
        **extra,
    }


def service_process(name: str, infra: Infra, *, env: dict[str, str] | None = None, module: str | None = None,
                    ) -> ServiceProcess:
    """`python -m services.<name>` (or `module`) on a free port, not started, with `env` (default: the test
    infrastructure's) and the service's own database role; it gets SIGKILL if this test process dies. Start it
    from the main thread."""
    port = free_port()
    env = dict(env if env is not None else process_env(infra))
    if "FAPIAO_DATABASE_URL" in env:  # its own role, as `make up` runs it (fapiao.infra.roles)
        service = module.split(".")[1] if module and module.startswith("services.") else name
        env["FAPIAO_DATABASE_URL"] = as_service(infra, env["FAPIAO_DATABASE_URL"], service)
    return ServiceProcess.service(name, env=env, log_dir=infra.logs,
                                  port=port, module=module, log_name=f"{name}-{port}", die_with_parent=True)
