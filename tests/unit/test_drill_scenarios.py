"""Scenario files: the shipped catalogue loads, and a wrong file is refused with the file and the field named."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic_settings import BaseSettings

from fapiao.drill.runner import ACTION_HANDLERS, POISON_TOPICS, Drill
from fapiao.drill.scenario import (
    _EXPECT,
    _LOAD,
    _TOP,
    ACTIONS,
    DB_PROXIED,
    DRILLS_DIR,
    PROCESSES,
    SERVICES,
    ScenarioError,
    catalogue,
    consumed_topics,
    load_scenario,
    parse_duration,
    parse_scenario,
)
from shared.consumers import ALL_GROUPS, ISSUER_STATUS_FEED, ConsumerGroup
from shared.topics import INVOICE_EVENTS, NOTIFICATIONS, Topic

DOC = DRILLS_DIR.parent / "docs" / "drills.md"

REQUIRED = {"baseline", "kill-issuer", "kill-sync", "kill-reconciler", "kill-notifier", "kill-taxstore", "pause-sync",
            "kill-kafka", "kill-postgres", "store-outage", "store-flaky", "store-lag-corrupt",
            "store-loses-confirmed", "poison", "webhook-down", "clients-idempotent", "clients-no-key",
            "net-latency", "net-resets", "net-blackhole", "db-cut"}


def test_the_catalogue_ships_every_scenario_of_the_issue_and_each_loads() -> None:
    cat = catalogue()
    assert REQUIRED | {"kill-sync-replica", "kill-relay-owner", "kill-broker"} <= set(cat)
    assert cat["kill-sync-replica"].steps[0].target == "sync-2"
    assert cat["kill-broker"].kafka_brokers == 3 and cat["kill-broker"].steps[0].target == "kafka-2"
    for name in ("kill-sync-replica", "kill-relay-owner", "kill-broker", "restore-under-load"):  # issue 16's setting
        assert cat[name].kafka_brokers == 3 and set(cat[name].replicas.values()) == {2}, name
        assert set(cat[name].replicas) == {"issuer", "sync", "reconciler", "notifier"}, name
    assert [s.target for s in cat["kill-relay-owner"].steps][:2] == ["reconciler:relay", "issuer:relay"]
    assert cat["baseline"].replicas == {} and cat["baseline"].kafka_brokers == 1
    assert [s.label() for s in cat["kill-sync"].steps] == ["kill sync", "start sync"]
    assert cat["store-outage"].steps[0].params == {"outage": True}
    assert cat["net-latency"].network and not cat["baseline"].network
    assert [s.action for s in cat["restore-under-load"].steps] == ["backup", "restore"]


@pytest.mark.parametrize(("value", "seconds"), [("20s", 20), ("2m", 120), ("500ms", 0.5), (3, 3), ("1.5h", 5400)])
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value, where="x") == seconds


@pytest.mark.parametrize(("body", "words"), [
    ('[[steps]]\nat = "5s"\naction = "explode"\n', "steps[0].action: unknown action 'explode'"),
    ('[[steps]]\nat = "5s"\naction = "kill"\n', "steps[0].target: `kill` needs a target"),
    ('[[steps]]\nat = "5s"\naction = "kill"\ntarget = "mysql"\n', "got 'mysql'"),
    ('[[steps]]\nat = "soon"\naction = "store_clear"\n', "steps[0].at: expected a duration"),
    ('[[steps]]\nat = "1s"\naction = "store_faults"\nerror_rte = 0.2\n', "unknown key(s) error_rte"),
    ('[[steps]]\nat = "1s"\naction = "store_faults"\nerror_rate = 2\n', "steps[0].error_rate: a rate between 0 and 1"),
    ('[[steps]]\nat = "1s"\naction = "store_lose"\n', "(store_lose): missing count"),
    ('[load]\nrate = 0\n', "load.rate must be a positive number"),
    ('[load]\nspeed = 3\n', "[load]: unknown key(s) speed"),
    ('[settings.sync]\nRETRY = "1"\n', "keys must be FAPIAO_* variables"),
    ('[[steps]]\nat = "1s"\naction = "kill"\ntarget = "sync-2"\n', "'sync-2': needs [replicas] sync = 2"),
    ('replicas = { sync = 2 }\n[[steps]]\nat = "1s"\naction = "kill"\ntarget = "sync-3"\n',
     "'sync-3': needs [replicas] sync = 2 or more"),
    ('[[steps]]\nat = "1s"\naction = "kill"\ntarget = "reconciler:relay"\n', "needs [replicas] reconciler"),
    ('kafka_brokers = 3\n[[steps]]\nat = "1s"\naction = "kill"\ntarget = "kafka-4"\n',
     "'kafka-4': needs kafka_brokers = 4"),
    ('replicas = { taxstore = 2 }\n', "replicas: a table of service = count"),
    ('kafka_brokers = 0\n', "kafka_brokers must be an integer from 1 to 5"),
    ('replicas = { sync = 2 }\n[[steps]]\nat = "1s"\naction = "store_faults"\ntarget = "sync-2"\n',
     "`store_faults` takes no target"),
    ('rate = [', "not valid TOML"),
    ('[[steps]]\nat = "1s"\naction = "restore"\n', "at most one `backup` and one `restore`, the backup first"),
    ('[[steps]]\nat = "1s"\naction = "backup"\n[[steps]]\nat = "2s"\naction = "backup"\n', "found backup, backup"),
    ('[[steps]]\nat = "1s"\naction = "backup"\ntarget = "issuer"\n', "`backup` takes no target"),
    ('[[steps]]\nat = "1s"\naction = "db_cut"\ntarget = "taxstore"\n', "`db_cut` needs a target, one of issuer, sync"),
    ('[[steps]]\nat = "1s"\naction = "poison"\ntopics = ["invoice.events.v1.dlq"]\n', "steps[0].topics: a list of "
     "consumed topics"),
])
def test_a_wrong_scenario_is_refused_naming_the_file_and_the_field(tmp_path: Path, body: str, words: str) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(body)
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert str(path) in str(err.value) and words in str(err.value)


def test_the_example_in_docs_drills_md_is_a_valid_scenario(tmp_path: Path) -> None:
    example = DOC.read_text().split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "kill-sync-twice.toml"
    path.write_text(example)
    s = load_scenario(path)
    assert [st.label() for st in s.steps] == ["kill sync", "start sync", "restart sync"]
    assert s.settings == {"reconciler": {"FAPIAO_SWEEP_INTERVAL": "5"}} and s.settle == 150


def _service_settings(service: str) -> set[str]:
    """The FAPIAO_* variables a service reads: the fields of the settings classes in services/<service>/settings.py."""
    module = importlib.import_module(f"services.{service}.settings")
    names: set[str] = set()
    for obj in vars(module).values():
        if isinstance(obj, type) and issubclass(obj, BaseSettings):
            prefix = str(obj.model_config.get("env_prefix", ""))
            names |= {f"{prefix}{f}".upper() for f in obj.model_fields}
    return names


def _toml_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a duration written bare in a comment: "120s"


def test_every_toml_example_in_docs_drills_md_names_only_what_the_loader_and_the_runner_know() -> None:
    """Each ```toml block of the page: every key is one the loader takes, every action is in the loader's table
    and in the runner's (with a Drill method behind it), its parameters and target are ones the action takes, a
    [settings] variable is one the service reads, and a "(default X)" in a comment is the loader's default. A doc
    example that drifted from the code fails here, without a stack."""
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 2
    for block in blocks:
        data = tomllib.loads(block)
        assert set(data) <= _TOP, set(data) - _TOP
        assert set(data.get("load", {})) <= _LOAD and set(data.get("expect", {})) <= _EXPECT
        for service, env in data.get("settings", {}).items():
            assert service in SERVICES, service
            assert set(env) <= _service_settings(service), (service, set(env) - _service_settings(service))
        for step in data.get("steps", []):
            action = step["action"]
            assert action in ACTIONS and action in ACTION_HANDLERS, action
            assert callable(getattr(Drill, ACTION_HANDLERS[action], None)), ACTION_HANDLERS[action]
            targets, required, optional = ACTIONS[action]
            params = set(step) - {"at", "action", "target"}
            assert required <= params <= required | optional, (action, params)
            assert (step.get("target") is None) == (targets is None), step
            assert targets is None or step["target"] in targets, step
        parse_scenario(data, where="docs/drills.md", default_name="example")  # and the loader takes it whole
        # "(default X)" next to a key: setting X changes nothing
        plain = parse_scenario({}, where="d", default_name="example")
        for key, default in re.findall(r"^(\w+)\s*=.*#.*\bdefault ([^),]+)\)", block, flags=re.M):
            if isinstance(data.get(key), dict):  # `replicas = {…}  # … default 1`: per entry
                continue
            table = "load" if key in _LOAD else "expect" if key in _EXPECT else None
            raw: dict[str, Any] = {table: {key: _toml_value(default)}} if table else {key: _toml_value(default)}
            assert parse_scenario(raw, where="d", default_name="example") == plain, (key, default)


def _doc_action_table() -> dict[str, tuple[str, set[str]]]:
    """docs/drills.md's table of actions: action -> (its target column, the parameters it names)."""
    rows: dict[str, tuple[str, set[str]]] = {}
    previous = ""
    for line in DOC.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        names, target, params = re.findall(r"`(\w+)`", cells[0]), cells[1], re.sub(r"\([^)]*\)", "", cells[2])
        target = previous if target == "the same" else target
        previous = target
        for name in names:
            rows[name] = (target, set(re.findall(r"`(\w+)`", params)))
    return rows


def test_the_action_table_in_docs_drills_md_is_the_loaders_and_the_runners() -> None:
    doc = _doc_action_table()
    assert set(doc) == set(ACTIONS) == set(ACTION_HANDLERS)
    for action, (target, params) in doc.items():
        targets, required, optional = ACTIONS[action]
        assert params == required | optional, (action, params)
        if targets is None:
            assert target == "", (action, target)
        elif target == "a service":
            assert targets == SERVICES, action
        else:
            assert set(target.split(", ")) == set(targets), (action, target)


def test_every_action_has_a_runner_method() -> None:
    for action, method in ACTION_HANDLERS.items():
        assert callable(getattr(Drill, method, None)), (action, method)


def test_poison_targets_every_topic_some_consumer_group_reads() -> None:
    for group in ALL_GROUPS:
        for topic in group.topics:
            assert topic.name in POISON_TOPICS, (group.name, topic.name)
    assert NOTIFICATIONS in ISSUER_STATUS_FEED.topics and NOTIFICATIONS.name in POISON_TOPICS
    assert set(POISON_TOPICS) == {t.name for g in ALL_GROUPS for t in g.topics}  # and nothing no one reads
    # a consumer added to the registry is covered with no change to the drills
    new = ConsumerGroup("auditor.trail", "auditor", (Topic("invoice.audit.v1", "test"), INVOICE_EVENTS), "test")
    assert set(consumed_topics((*ALL_GROUPS, new))) == set(POISON_TOPICS) | {"invoice.audit.v1"}
    poison = catalogue()["poison"]
    assert all("topics" not in s.params for s in poison.steps if s.action == "poison")  # so it takes every one


def test_db_cut_cuts_every_service_routed_through_a_proxy_and_restores_each() -> None:
    s = catalogue()["db-cut"]
    cut = [st.target for st in s.steps if st.action == "db_cut"]
    restored = [st.target for st in s.steps if st.action == "db_restore"]
    assert sorted(cut) == sorted(restored) == sorted(DB_PROXIED)
    assert set(DB_PROXIED) == {"issuer", "sync", "reconciler", "notifier"} and set(DB_PROXIED) <= set(PROCESSES)
    for target in DB_PROXIED:  # each is cut before it is restored, and before the load ends
        at_cut = next(st.at for st in s.steps if st.action == "db_cut" and st.target == target)
        at_restore = next(st.at for st in s.steps if st.action == "db_restore" and st.target == target)
        assert at_cut < at_restore < s.load.duration, target
    assert s.network


def test_a_db_cut_step_asks_for_toxiproxy_by_itself() -> None:
    s = parse_scenario({"steps": [{"at": "1s", "action": "db_cut", "target": "issuer"}]}, where="x",
                       default_name="x")
    assert s.network
