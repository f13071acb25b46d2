"""docker-compose.yml and the Dockerfile stay runnable, checked by parsing them: no Docker needed (and none runs on
the machines this project is built on: the file has never been started there).

The shape: three KRaft nodes (replication factor 3, min ISR 2), two replicas of the issuer, sync, the reconciler
and the notifier behind HAProxy (ops/haproxy/haproxy.cfg), one tax store.

Python services are found in the compose file (built from "." or run as `python -m services.<x>`)
and checked against their own settings class, so a service added later is covered without
touching this file.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import shlex
import typing
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import SecretStr

from shared.settings import CoreSettings, SharedSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

SERVICE_MODULE = re.compile(r"^services\.(?P<pkg>[A-Za-z_][A-Za-z0-9_]*)$")
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error} (compose interpolation)
INTERPOLATION = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
)
# What a user would export for a variable the file declares mandatory (${VAR:?...}).
USER_SUPPLIED = "compose-test-0123456789abcdef0123456789"


# --------------------------------------------------------------------------- loading


@cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    assert isinstance(data.get("services"), dict), "docker-compose.yml needs a services: mapping"
    return data


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


@cache
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a continuation line"
    return instructions


def dockerfile_args(keyword: str) -> list[str]:
    return [args for kw, args in dockerfile() if kw == keyword]


def parse_command(value: str | list[str]) -> list[str]:
    if isinstance(value, list):
        return [str(part) for part in value]
    text = value.strip()
    return [str(part) for part in json.loads(text)] if text.startswith("[") else shlex.split(text)


def image_cmd() -> list[str]:
    cmds = dockerfile_args("CMD")
    assert cmds, "Dockerfile has no CMD"
    return parse_command(cmds[-1])


def image_env() -> dict[str, str]:
    """ENV as the container sees it (KEY=VALUE pairs; the legacy `ENV KEY VALUE` form too)."""
    env: dict[str, str] = {}
    for args in dockerfile_args("ENV"):
        parts = shlex.split(args)
        if parts and "=" not in parts[0]:
            env[parts[0]] = " ".join(parts[1:])
            continue
        for part in parts:
            key, _, value = part.partition("=")
            env[key] = value
    return env


def module_of(command: list[str]) -> str | None:
    """`python -m services.x ...` -> "x"; None for anything else."""
    if len(command) >= 3 and Path(command[0]).name.startswith("python") and command[1] == "-m":
        match = SERVICE_MODULE.match(command[2])
        return match["pkg"] if match else None
    return None


def service_command(svc: Mapping[str, Any]) -> list[str]:
    """What the container runs: the compose command, else the image's CMD (when built here)."""
    if svc.get("command") is not None:
        return parse_command(svc["command"])
    return image_cmd() if builds_here(svc) else []


def builds_here(svc: Mapping[str, Any]) -> bool:
    build = svc.get("build")
    if isinstance(build, dict):
        build = build.get("context", ".")
    return build is not None and str(build).rstrip("/") in {".", "./"}


def python_services() -> dict[str, str]:
    """compose service name -> services.<pkg> it runs."""
    found: dict[str, str] = {}
    for name, svc in services().items():
        command = parse_command(svc["command"]) if svc.get("command") is not None else []
        if not (builds_here(svc) or module_of(command)):
            continue
        found[name] = module_of(service_command(svc)) or name
    return found


def settings_class(pkg: str) -> type[CoreSettings]:
    module: ModuleType = importlib.import_module(f"services.{pkg}.settings")
    classes = [
        obj for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, CoreSettings) and obj not in (CoreSettings, SharedSettings)
        and obj.__module__ == module.__name__
    ]
    assert len(classes) == 1, (
        f"services/{pkg}/settings.py must define exactly one settings class (a CoreSettings subclass)"
    )
    return classes[0]


def environment(svc: Mapping[str, Any]) -> dict[str, str | None]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.partition("=") for item in env)
        return {key: (value if sep else None) for key, sep, value in pairs}
    return {str(key): (None if value is None else str(value)) for key, value in env.items()}


def env_name(cls: type[SharedSettings], field: str) -> str:
    alias = cls.model_fields[field].alias
    return (str(cls.model_config.get("env_prefix", "")) + (alias or field)).upper()


def required_env(cls: type[SharedSettings]) -> list[str]:
    fields = cls.model_fields.items()
    return sorted(env_name(cls, name) for name, field in fields if field.is_required())


def interpolate(value: str) -> str:
    """What compose would substitute, with every mandatory ${VAR:?...} supplied by the user."""

    def one(match: re.Match[str]) -> str:
        op = match["op"] or ""
        if op.endswith("?"):
            return USER_SUPPLIED
        if op.endswith("-"):
            return match["arg"]
        return ""  # compose substitutes an unset ${VAR} with "" (and only warns)

    return INTERPOLATION.sub(one, value.replace("$$", "\0")).replace("\0", "$")


def default_port(cls: type[SharedSettings]) -> int:
    assert "port" in cls.model_fields, f"{cls.__name__} has no port setting"
    port = cls.model_fields["port"].default
    assert isinstance(port, int), f"{cls.__name__}.port needs an integer default"
    return port


def published_ports(svc: Mapping[str, Any]) -> list[tuple[int, int]]:
    """(host port, container port) pairs from the short and the long ports syntax."""
    pairs: list[tuple[int, int]] = []
    for entry in svc.get("ports") or []:
        if isinstance(entry, dict):
            target, published = entry["target"], entry.get("published", entry["target"])
        else:
            fields = str(entry).split("/")[0].split(":")
            if len(fields) == 1:
                continue  # "8000" alone publishes on a random host port
            published, target = fields[-2], fields[-1]
        pairs.append((int(published), int(target)))
    return pairs


def host_port(address: str, default: int) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    return (host, int(port)) if host else (address.strip(), default)


PYTHON_SERVICES = python_services()


def test_compose_declares_the_stack() -> None:
    assert {"kafka-1", "kafka-2", "kafka-3", "postgres", "issuer", "balancer"} <= set(services())
    assert PYTHON_SERVICES, "no Python service found in docker-compose.yml"
    assert PYTHON_SERVICES["issuer"] == "issuer"


# --------------------------------------------------------------------------- infrastructure


KAFKA_NODES = ("kafka-1", "kafka-2", "kafka-3")
REPLICATED = ("issuer", "sync", "reconciler", "notifier")
HAPROXY_CFG = ROOT / "ops" / "haproxy" / "haproxy.cfg"


def kafka_env(name: str) -> dict[str, str]:
    return {key: value or "" for key, value in environment(services()[name]).items()}


@pytest.mark.parametrize("name", KAFKA_NODES)
def test_kafka_node_is_a_combined_kraft_node_of_the_cluster(name: str) -> None:
    kafka = services()[name]
    image = str(kafka.get("image", ""))
    assert re.match(r"^apache/kafka(-native)?:\d", image), f"pin apache/kafka, not {image!r}"
    env = kafka_env(name)
    roles = {role.strip() for role in env.get("KAFKA_PROCESS_ROLES", "").split(",")}
    assert {"broker", "controller"} <= roles, "combined KRaft nodes: broker and controller in one"
    controller = env.get("KAFKA_CONTROLLER_LISTENER_NAMES", "")
    listeners = env.get("KAFKA_LISTENERS", "")
    assert controller and f"{controller}://" in listeners
    protocols = env.get("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "").split(",")
    protocol_map = dict(pair.split(":", 1) for pair in protocols)
    listener_names = {item.split("://")[0] for item in listeners.split(",")}
    assert listener_names <= set(protocol_map), "every listener needs a security protocol"
    # Its own identity: node id, the address it advertises to the others, its own data volume.
    assert kafka.get("hostname") == name
    assert f"PLAINTEXT://{name}:9092" in env.get("KAFKA_ADVERTISED_LISTENERS", "")
    mounts = [str(v).split(":")[0] for v in kafka.get("volumes") or []]
    assert len(mounts) == 1 and mounts[0] in (compose().get("volumes") or {}), mounts
    assert env.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "").lower() == "false", (
        "the services create their topics; auto-creation would hide a missing one"
    )
    assert "healthcheck" in kafka, "dependants wait for service_healthy"


def test_kafka_is_a_three_node_cluster_that_survives_losing_one() -> None:
    envs = {name: kafka_env(name) for name in KAFKA_NODES}
    ids = {name: env["KAFKA_NODE_ID"] for name, env in envs.items()}
    assert sorted(ids.values()) == ["1", "2", "3"], ids
    assert len({env["CLUSTER_ID"] for env in envs.values()}) == 1, "one cluster id on every node"
    for name, env in envs.items():
        voters = dict(v.split("@", 1) for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
        assert voters == {ids[n]: f"{n}:9093" for n in KAFKA_NODES}, (name, voters)
        # Three copies of everything, two needed for a write, no unclean leader: a broker lost loses nothing.
        for key in ("KAFKA_DEFAULT_REPLICATION_FACTOR", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                    "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR"):
            assert env.get(key) == "3", (name, key)
        for key in ("KAFKA_MIN_INSYNC_REPLICAS", "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
                    "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR"):
            assert env.get(key) == "2", (name, key)
        assert env.get("KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE") == "false", name
    for name, svc in services().items():
        assert "zookeeper" not in str(svc.get("image", "")).lower(), f"{name}: KRaft, no ZooKeeper"
        assert not any("ZOOKEEPER" in key.upper() for key in environment(svc)), name
    for name in PYTHON_SERVICES:  # every service knows all three brokers and asks for three copies
        env = {key: interpolate(value or "") for key, value in environment(services()[name]).items()}
        assert {host_port(a, 9092)[0] for a in env["FAPIAO_KAFKA_BOOTSTRAP"].split(",")} == set(KAFKA_NODES)
        assert env.get("FAPIAO_KAFKA_REPLICATION_FACTOR") == "3", name


def haproxy() -> dict[str, dict[str, list[str]]]:
    """haproxy.cfg as section kind -> name -> its lines."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: list[str] = []
    for raw in HAPROXY_CFG.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not raw[0].isspace():
            kind, _, name = line.partition(" ")
            current = sections.setdefault(kind, {}).setdefault(name.strip(), [])
        else:
            current.append(line.strip())
    return sections


def test_two_replicas_of_each_service_that_may_run_twice_and_one_tax_store() -> None:
    for name in PYTHON_SERVICES:
        replicas = int((services()[name].get("deploy") or {}).get("replicas", 1))
        assert replicas == (2 if name in REPLICATED else 1), name
        if replicas > 1:  # compose names replicas itself; a fixed name or host port would clash between them
            assert "container_name" not in services()[name] and "hostname" not in services()[name], name


@pytest.mark.parametrize("name", REPLICATED)
def test_the_balancer_publishes_each_replicated_service_and_checks_its_replicas(name: str) -> None:
    port = default_port(settings_class(PYTHON_SERVICES[name]))
    balancer = services()["balancer"]
    assert str(balancer["image"]).startswith("haproxy:"), balancer["image"]
    assert "./ops/haproxy:/usr/local/etc/haproxy:ro" in balancer["volumes"]
    assert (port, port) in published_ports(balancer), f"the balancer publishes {port}:{port}"
    assert name in (balancer.get("depends_on") or {})
    cfg = haproxy()
    [frontend] = [lines for lines in cfg["frontend"].values() if f"bind :{port}" in lines]
    [backend] = [line.split()[1] for line in frontend if line.startswith("default_backend")]
    lines = cfg["backend"][backend]
    assert "option httpchk GET /readyz" in lines, "only ready replicas get requests"
    [template] = [line.split() for line in lines if line.startswith("server-template")]
    assert template[3] == f"{name}:{port}" and "resolvers" in template and "check" in template, template
    assert int(template[2]) >= 2, "room for the replicas"
    assert "docker" in cfg["resolvers"] and "nameserver dns 127.0.0.11:53" in cfg["resolvers"]["docker"]


def test_postgres_has_health_check_and_persistent_volume() -> None:
    pg = services()["postgres"]
    image = str(pg.get("image", ""))
    assert image.startswith("postgres:"), image
    healthcheck = json.dumps(pg.get("healthcheck", {}))
    assert "pg_isready" in healthcheck, "dependants wait for service_healthy"
    mounts = [str(v).split(":") for v in pg.get("volumes") or [] if isinstance(v, str)]
    named = [m for m in mounts if len(m) >= 2 and m[0] in (compose().get("volumes") or {})]
    assert named, "PostgreSQL data should live in a named volume"
    major = re.match(r"postgres:(\d+)", image)
    if major and int(major[1]) >= 18:
        # The 18+ image keeps data in /var/lib/postgresql/<major>/docker and refuses a
        # volume at the old .../data path.
        assert all(m[1].rstrip("/") == "/var/lib/postgresql" for m in named), named


# --------------------------------------------------------------------------- Python services


@pytest.mark.parametrize("name", sorted(PYTHON_SERVICES))
def test_python_service_runs_an_existing_module(name: str) -> None:
    svc = services()[name]
    pkg = module_of(service_command(svc))
    assert pkg, f"{name}: command should be `python -m services.<name>`, got {service_command(svc)}"
    assert (ROOT / "services" / pkg / "__main__.py").is_file(), f"no services/{pkg}/__main__.py"
    assert builds_here(svc) or svc.get("image"), f"{name}: neither build nor image"


@pytest.mark.parametrize("name", sorted(PYTHON_SERVICES))
def test_python_service_sets_every_required_setting(name: str) -> None:
    cls = settings_class(PYTHON_SERVICES[name])
    env = environment(services()[name])
    missing = [key for key in required_env(cls) if not env.get(key)]
    assert not missing, f"{name}: {cls.__name__} requires {missing}; docker-compose.yml lacks them"
    assert env.get("FAPIAO_ENV") not in (None, "development"), f"{name}: FAPIAO_ENV is development"


@pytest.mark.parametrize("name", sorted(PYTHON_SERVICES))
def test_python_service_secrets_come_from_the_user(name: str) -> None:
    cls = settings_class(PYTHON_SERVICES[name])
    env = environment(services()[name])
    for field_name, field in cls.model_fields.items():
        if SecretStr not in (field.annotation, *typing.get_args(field.annotation)):
            continue
        key = env_name(cls, field_name)
        if key not in env:
            continue
        match = INTERPOLATION.fullmatch(env[key] or "")
        assert match and (match["op"] or "").endswith("?"), (
            f"{name}: {key} must be a mandatory ${{VAR:?message}}, not a value in the file"
        )


@pytest.mark.parametrize("name", sorted(PYTHON_SERVICES))
def test_python_service_environment_is_valid_for_its_settings(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The container's environment (image ENV + compose) passes the settings validation."""
    cls = settings_class(PYTHON_SERVICES[name])
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    for key in list(os.environ):
        if key.upper().startswith(prefix):
            monkeypatch.delenv(key)
    container_env = {**image_env(), **environment(services()[name])}
    for key, value in container_env.items():
        if key.upper().startswith(prefix) and value is not None:
            monkeypatch.setenv(key, interpolate(value))

    settings = cls()  # raises if a value is missing, malformed or a placeholder secret

    assert settings.env != "development"
    host = getattr(settings, "host", None)
    assert host not in ("127.0.0.1", "localhost", "::1"), (
        f"{name}: binds {host}, unreachable from outside its container; set FAPIAO_HOST=0.0.0.0"
    )


@pytest.mark.parametrize("name", sorted(PYTHON_SERVICES))
def test_python_service_publishes_its_default_port(name: str) -> None:
    """Itself, or, with replicas (which cannot share a host port), through the balancer."""
    svc = services()[name]
    port = default_port(settings_class(PYTHON_SERVICES[name]))
    env = environment(svc)
    # The image HEALTHCHECK probes ${FAPIAO_PORT}; without it a non-8000 service looks dead.
    assert env.get("FAPIAO_PORT") == str(port), f"{name}: set FAPIAO_PORT={port}, its default"
    if int((svc.get("deploy") or {}).get("replicas", 1)) > 1:
        assert not published_ports(svc), f"{name}: replicas cannot all publish {port}; the balancer does"
        assert (port, port) in published_ports(services()["balancer"]), f"balancer: publish {port}:{port}"
    else:
        assert (port, port) in published_ports(svc), f"{name}: publish {port}:{port}"


def test_published_host_ports_are_unique() -> None:
    seen: dict[int, str] = {}
    for name, svc in services().items():
        for published, _ in published_ports(svc):
            assert published not in seen, f"{name} and {seen[published]} both publish {published}"
            seen[published] = name


@pytest.mark.parametrize("name", sorted(PYTHON_SERVICES))
def test_python_service_waits_for_healthy_infrastructure(name: str) -> None:
    svc = services()[name]
    depends = svc.get("depends_on")
    assert isinstance(depends, dict), f"{name}: depends_on needs the long form with conditions"
    env = {key: interpolate(value or "") for key, value in environment(svc).items()}
    db_host = urlsplit(env["FAPIAO_DATABASE_URL"]).hostname
    kafka_hosts = {host_port(a, 9092)[0] for a in env["FAPIAO_KAFKA_BOOTSTRAP"].split(",")}
    for needed in {db_host, *kafka_hosts}:
        assert needed in depends, f"{name}: connects to {needed} but does not depend on it"
    for dep, spec in depends.items():
        assert dep in services(), f"{name}: depends on unknown service {dep}"
        condition = (spec or {}).get("condition")
        if dep in (db_host, *kafka_hosts):  # infrastructure: nothing works without it
            assert condition == "service_healthy", f"{name}: wait for healthy {dep}"
        elif dep == "db-roles":  # a one-shot: its role must exist before it connects
            assert condition == "service_completed_successfully", f"{name}: wait for db-roles to finish"
        else:  # another service this one calls: it may only need it started (and answers 503 meanwhile)
            assert condition in ("service_healthy", "service_started"), f"{name}: {dep} needs a condition"
        if condition == "service_healthy":
            has_check = "healthcheck" in services()[dep] or builds_here(services()[dep])  # image HEALTHCHECK
            assert has_check, f"{dep} has no healthcheck: never service_healthy"


@pytest.mark.parametrize("name", sorted(PYTHON_SERVICES))
def test_service_urls_point_at_a_service_it_waits_for(name: str) -> None:
    """FAPIAO_*_URL settings that name another compose service reach it on the port it listens on."""
    svc = services()[name]
    env = {key: interpolate(value or "") for key, value in environment(svc).items()}
    for key, value in env.items():
        if not key.endswith("_URL") or key in ("FAPIAO_DATABASE_URL", "FAPIAO_PUBLIC_URL"):
            continue
        parts = urlsplit(value)
        if parts.hostname not in services():
            continue
        target = parts.hostname
        target_env = {k: interpolate(v or "") for k, v in environment(services()[target]).items()}
        listens = int(target_env.get("FAPIAO_PORT") or default_port(settings_class(PYTHON_SERVICES[target])))
        assert (parts.port or 80) == listens, f"{name}: {key}={value} but {target} listens on {listens}"
        assert target in (svc.get("depends_on") or {}), f"{name}: {key} uses {target} without depends_on"


@pytest.mark.parametrize("name", sorted(PYTHON_SERVICES))
def test_python_service_addresses_match_the_infrastructure(name: str) -> None:
    env = {key: interpolate(value or "") for key, value in environment(services()[name]).items()}

    dsn = urlsplit(env["FAPIAO_DATABASE_URL"])
    pg_env = environment(services()[dsn.hostname or ""])
    roles_env = environment(services()["db-roles"])
    # Its own role, which the db-roles container makes (fapiao/infra/roles.py) with the password it is given.
    assert dsn.username == f"fapiao_{PYTHON_SERVICES[name]}", f"{name}: connects as {dsn.username}"
    assert dsn.password == interpolate(str(roles_env["FAPIAO_DB_ROLE_PASSWORD"]))
    assert dsn.path.lstrip("/") == pg_env.get("POSTGRES_DB", pg_env.get("POSTGRES_USER"))
    assert (dsn.port or 5432) == 5432

    for address in env["FAPIAO_KAFKA_BOOTSTRAP"].split(","):
        host, port = host_port(address, 9092)
        advertised = environment(services()[host]).get("KAFKA_ADVERTISED_LISTENERS") or ""
        listeners = [item.split("://", 1)[1] for item in advertised.split(",") if "://" in item]
        endpoints = {host_port(item, 9092) for item in listeners}
        assert (host, port) in endpoints, f"{name}: {address} is not advertised ({advertised})"


def test_the_services_roles_are_made_before_any_service_starts() -> None:
    """db-roles runs fapiao.infra.roles as the superuser once PostgreSQL is healthy; every Python service waits
    for it to finish."""
    roles = services()["db-roles"]
    assert parse_command(roles["command"]) == ["python", "-m", "fapiao.infra.roles"]
    env = {key: interpolate(str(value)) for key, value in environment(roles).items()}
    admin, pg_env = urlsplit(env["FAPIAO_DATABASE_URL"]), environment(services()["postgres"])
    assert (admin.hostname, admin.username, admin.password) == (
        "postgres", pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"])
    assert env["FAPIAO_DB_ROLE_PASSWORD"]
    assert roles["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert roles.get("restart") == "no", "a one-shot"
    for name in PYTHON_SERVICES:
        depends = services()[name].get("depends_on") or {}
        assert (depends.get("db-roles") or {}).get("condition") == "service_completed_successfully", name


def test_python_services_share_infrastructure_and_admin_token() -> None:
    """As compose resolves them without a drills env file (drills/compose.env reroutes some through Toxiproxy)."""
    shared = required_env(SharedSettings)
    values = {  # the same server and database; the user is each service's own (test above)
        name: {key: re.sub(r"//[^@]*@", "//@", interpolate(str(environment(services()[name]).get(key))))
               for key in shared}
        for name in PYTHON_SERVICES
    }
    assert len({json.dumps(v, sort_keys=True) for v in values.values()}) == 1, values


# --------------------------------------------------------------------------- the image


def test_dockerfile_default_command_is_a_service() -> None:
    pkg = module_of(image_cmd())
    assert pkg, f"CMD should be `python -m services.<name>`, got {image_cmd()}"
    assert (ROOT / "services" / pkg / "__main__.py").is_file(), f"no services/{pkg}/__main__.py"
    expose = {int(p.split("/")[0]) for args in dockerfile_args("EXPOSE") for p in args.split()}
    assert default_port(settings_class(pkg)) in expose


def test_dockerfile_base_matches_the_project_python() -> None:
    base = dockerfile_args("FROM")[-1].split()[0]
    assert base.startswith("python:3.11"), base


def test_dockerfile_installs_the_project_without_dev_extras() -> None:
    runs = " ".join(dockerfile_args("RUN"))
    installs_project = re.search(r"pip install[^&;]*\s\.(\s|$)", runs) or "pip install /" in runs
    assert installs_project, "the image does not install the project"
    assert "[dev]" not in runs, "the image must not carry the dev extras"


def test_dockerfile_does_not_run_as_root() -> None:
    users = dockerfile_args("USER")
    assert users, "Dockerfile needs a USER line; containers run as root otherwise"
    user = users[-1].split(":")[0].strip()
    assert user not in {"root", "0"}, f"final USER is {users[-1]}"


def test_dockerfile_health_check_probes_healthz_on_the_service_port() -> None:
    checks = dockerfile_args("HEALTHCHECK")
    assert checks and checks[-1].upper() != "NONE", "Dockerfile needs a HEALTHCHECK"
    options, sep, command = checks[-1].partition("CMD ")
    assert sep and command.strip(), f"HEALTHCHECK without CMD: {checks[-1]}"
    assert all(opt.startswith("--") for opt in options.split()), options
    assert "/healthz" in command
    # The port comes from the environment at run time, so one image serves every service.
    fallback = re.search(r"\$\{FAPIAO_PORT:-(\d+)\}", command)
    assert fallback, "HEALTHCHECK should use ${FAPIAO_PORT:-<default>}"
    pkg = module_of(image_cmd())
    assert pkg and int(fallback[1]) == default_port(settings_class(pkg))


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    ignored = {line.strip().strip("/") for line in lines}
    for entry in (".venv", ".git", ".run", ".cache", ".test-artifacts"):
        assert entry in ignored, f".dockerignore should exclude {entry}"


# --------------------------------------------------------------------------- the drills profile (docs/drills.md)


def test_drills_env_routes_every_database_user_through_the_profiles_toxiproxy_proxies() -> None:
    """drills/compose.env points the services at Toxiproxy's listeners; each listener forwards to the address the
    service uses without it, and the variables are the ones docker-compose.yml interpolates."""
    root = Path(__file__).resolve().parents[1]
    proxies = {p["listen"].rsplit(":", 1)[1]: p
               for p in json.loads((root / "drills/compose-toxiproxy.json").read_text())}
    drill_env = dict(line.split("=", 1) for line in (root / "drills/compose.env").read_text().splitlines()
                     if line and not line.startswith("#"))
    text = (root / "docker-compose.yml").read_text()
    routed = {"FAPIAO_SYNC_TAXSTORE_URL": ("sync", "FAPIAO_TAXSTORE_URL"),
              "FAPIAO_SYNC_DATABASE_URL": ("sync", "FAPIAO_DATABASE_URL"),
              "FAPIAO_RECONCILER_DATABASE_URL": ("reconciler", "FAPIAO_DATABASE_URL"),
              "FAPIAO_ISSUER_DATABASE_URL": ("issuer", "FAPIAO_DATABASE_URL"),
              "FAPIAO_NOTIFIER_DATABASE_URL": ("notifier", "FAPIAO_DATABASE_URL")}
    for var, (svc, key) in routed.items():
        assert "${" + var + ":-" in text, var
        direct = interpolate(str(environment(services()[svc])[key]))
        via = drill_env[var]
        host, port = host_port(via.split("@")[-1].split("//")[-1].split("/")[0], 0)
        assert host == "toxiproxy" and str(port) in proxies, (var, via)
        assert proxies[str(port)]["upstream"] == direct.split("@")[-1].split("//")[-1].split("/")[0], (var, direct)
    assert services()["toxiproxy"]["volumes"][0].startswith("./drills/compose-toxiproxy.json:")
    assert "FAPIAO_WEBHOOK_ALLOW_PRIVATE" in drill_env and environment(services()["drill"])[
        "FAPIAO_DRILL_RECEIVER_ADVERTISE"] == "drill"


def test_drills_profile_adds_toxiproxy_and_a_drill_container_running_the_cli() -> None:
    svcs = services()
    toxi, drill = svcs["toxiproxy"], svcs["drill"]
    assert toxi.get("profiles") == ["drills"] and drill.get("profiles") == ["drills"]
    assert str(toxi["image"]).endswith(":2.12.0"), "the same Toxiproxy version `make chaos` builds"
    command = parse_command(drill["command"])
    assert command[:3] == ["fapiao", "drill", "run"] and "--compose" in command
    assert "/var/run/docker.sock:/var/run/docker.sock" in drill.get("volumes", [])
    assert drill["image"] == svcs["issuer"]["image"] and not builds_here(drill)
    for name, svc in svcs.items():  # the default profile stays what it was
        if name not in ("toxiproxy", "drill"):
            assert "drills" not in (svc.get("profiles") or []), name


def test_every_fault_target_of_a_compose_drill_has_its_toxiproxy_proxy() -> None:
    """Each service a drill can cut from PostgreSQL (and the store link) has a proxy in the profile's config."""
    from fapiao.drill.compose import PROXIES
    from fapiao.drill.scenario import DB_PROXIED

    root = Path(__file__).resolve().parents[1]
    configured = {p["name"] for p in json.loads((root / "drills/compose-toxiproxy.json").read_text())}
    assert {f"postgres-{s}" for s in DB_PROXIED} | {"taxstore"} == set(PROXIES) and set(PROXIES.values()) <= configured
