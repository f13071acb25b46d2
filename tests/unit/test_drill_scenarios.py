"""Scenario files: the shipped catalogue loads, and a wrong file is refused with the file and the field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from fapiao.drill.scenario import DRILLS_DIR, ScenarioError, catalogue, load_scenario, parse_duration

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
])
def test_a_wrong_scenario_is_refused_naming_the_file_and_the_field(tmp_path: Path, body: str, words: str) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(body)
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert str(path) in str(err.value) and words in str(err.value)


def test_the_example_in_docs_drills_md_is_a_valid_scenario(tmp_path: Path) -> None:
    doc = (DRILLS_DIR.parent / "docs" / "drills.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "kill-sync-twice.toml"
    path.write_text(example)
    s = load_scenario(path)
    assert [st.label() for st in s.steps] == ["kill sync", "start sync", "restart sync"]
    assert s.settings == {"reconciler": {"FAPIAO_SWEEP_INTERVAL": "5"}} and s.settle == 150
