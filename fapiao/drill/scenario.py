"""Scenario files: one TOML file per scenario under drills/, loaded into frozen dataclasses with errors that name the
file and the field. The format is documented in docs/drills.md."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.consumers import ConsumerGroup

__all__ = ["ACTIONS", "DB_PROXIED", "DRILLS_DIR", "NETWORK_ACTIONS", "Load", "Scenario", "ScenarioError", "Step",
           "catalogue", "consumed_topics", "load_scenario", "parse_duration"]

DRILLS_DIR = Path(__file__).resolve().parents[2] / "drills"

SERVICES = ("issuer", "sync", "reconciler", "notifier", "taxstore")
INFRA = ("kafka", "postgres")
PROCESSES = SERVICES + INFRA
PROXIES = ("taxstore",)  # network faults: the sync service reaches the store through Toxiproxy
# With network = true, each of these reaches PostgreSQL through a Toxiproxy proxy of its own (db_cut / db_restore);
# the tax store, standing in for the authority, keeps its direct connection.
DB_PROXIED = ("issuer", "sync", "reconciler", "notifier")
REPLICABLE = ("issuer", "sync", "reconciler", "notifier")  # [replicas]: how many processes of each
# Beyond the names above, a process step may name one replica (`sync-2`, with [replicas] sync = 2 or more), one
# Kafka node (`kafka-2`, with kafka_brokers = 3), or `<service>:relay`: the replica relaying that service's outbox
# at the moment of the step (found by its fapiao_outbox_relay_leader metric). `sync` alone is every replica.
_REPLICA = re.compile(r"(?P<svc>issuer|sync|reconciler|notifier)-(?P<n>\d)")
_NODE = re.compile(r"kafka-(?P<n>\d)")
_RELAY = re.compile(r"(?P<svc>issuer|sync|reconciler|notifier):relay")

# action -> (what `target` may be, or None when the action takes no target; required params; optional params)
ACTIONS: dict[str, tuple[tuple[str, ...] | None, frozenset[str], frozenset[str]]] = {
    "kill": (PROCESSES, frozenset(), frozenset()),            # kill -9 the process group
    "start": (PROCESSES, frozenset(), frozenset()),           # start it again (after kill)
    "restart": (PROCESSES, frozenset(), frozenset()),         # kill -9 and start at once
    "pause": (SERVICES, frozenset(), frozenset()),            # SIGSTOP
    "resume": (SERVICES, frozenset(), frozenset()),           # SIGCONT
    "store_faults": (None, frozenset(), frozenset({
        "latency_ms", "latency_jitter_ms", "error_rate", "timeout_rate", "drop_rate", "visibility_delay_ms",
        "corrupt_rate", "outage", "timeout_hang_ms"})),
    "store_clear": (None, frozenset(), frozenset()),
    "store_lose": (None, frozenset({"count"}), frozenset()),  # the store forgets confirmed invoices
    "toxic": (PROXIES, frozenset({"type"}), frozenset({"attributes", "stream", "toxicity", "name"})),
    "toxics_clear": (PROXIES, frozenset(), frozenset()),
    "proxy_down": (PROXIES, frozenset(), frozenset()),        # a black hole: connections refused
    "proxy_up": (PROXIES, frozenset(), frozenset()),
    "db_cut": (DB_PROXIED, frozenset(), frozenset()),         # the service's PostgreSQL connections go nowhere
    "db_restore": (DB_PROXIED, frozenset(), frozenset()),
    "poison": (None, frozenset(), frozenset({"topics", "count"})),  # undecodable records on consumed topics
    "receiver_down": (None, frozenset(), frozenset()),        # the tenant's webhook receiver answers 503
    "receiver_up": (None, frozenset(), frozenset()),
    "backup": (None, frozenset(), frozenset()),               # `fapiao backup create` of the scenario's database
    "restore": (None, frozenset(), frozenset()),              # services killed, the backup restored, started again
}

# Steps that need Toxiproxy between the services: a scenario with one of them gets network = true by itself.
NETWORK_ACTIONS = frozenset({"toxic", "toxics_clear", "proxy_down", "proxy_up", "db_cut", "db_restore"})


def consumed_topics(groups: Iterable[ConsumerGroup] | None = None) -> tuple[str, ...]:
    """Every topic some consumer group reads (default: the registry, shared.consumers.ALL_GROUPS), unprefixed: what
    `poison` poisons by default and the only names its `topics` may list. A group added to the registry is covered
    without touching the drills."""
    from shared.consumers import ALL_GROUPS

    return tuple(sorted({t.name for g in (ALL_GROUPS if groups is None else groups) for t in g.topics}))


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message names the file and the field."""


def parse_duration(value: Any, *, where: str) -> float:
    """'20s', '2m', '500ms', '1.5h' or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ScenarioError(f"{where}: expected a duration like \"20s\" or \"2m\", not {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ScenarioError(f"{where}: expected a duration like \"20s\", \"2m\" or \"500ms\", not {value!r}")
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if seconds < 0:
        raise ScenarioError(f"{where}: a duration cannot be negative ({value!r})")
    return seconds


@dataclass(frozen=True)
class Step:
    at: float
    action: str
    target: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.action}{' ' + self.target if self.target else ''}{f' ({extra})' if extra else ''}"


@dataclass(frozen=True)
class Load:
    rate: float = 10.0          # new invoices per second, open loop
    duration: float = 40.0      # seconds of load
    clients: int = 1            # clients posting each invoice concurrently (retrying on no answer / 5xx)
    idempotency_key: bool = True
    red_letters: float = 0.0    # share of acknowledged invoices the workload then asks a full red letter (红冲) for


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    load: Load
    steps: tuple[Step, ...]
    settle: float = 120.0       # bounded convergence wait after the last fault step and the end of load
    settings: dict[str, dict[str, str]] = field(default_factory=dict)  # service -> FAPIAO_* overrides
    network: bool = False       # route sync -> store through Toxiproxy
    expect: dict[str, Any] = field(default_factory=dict)  # e.g. {stuck_allowed = true, lost_allowed = 0}
    path: Path | None = None
    replicas: dict[str, int] = field(default_factory=dict)  # service -> processes (1 when not named)
    kafka_brokers: int = 1      # a KRaft cluster of this many nodes (replication factor min(3, n))

    @property
    def faults_end(self) -> float:
        return max((s.at for s in self.steps), default=0.0)


_TOP = {"name", "description", "load", "steps", "settle", "settings", "network", "expect", "replicas",
        "kafka_brokers"}
_LOAD = {"rate", "duration", "clients", "idempotency_key", "red_letters"}
_EXPECT = {"stuck_allowed", "unconfirmed_allowed", "lost_expected"}


def _unknown(keys: set[str], allowed: set[str], where: str) -> None:
    extra = sorted(keys - allowed)
    if extra:
        raise ScenarioError(f"{where}: unknown key(s) {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}")


def _names_a_part(action: str, target: Any) -> bool:
    """A replica, a Kafka node or a relay owner, for the process steps that can take one."""
    if not isinstance(target, str):
        return False
    if action in ("kill", "start", "restart"):
        return any(p.fullmatch(target) for p in (_REPLICA, _NODE, _RELAY))
    return action in ("pause", "resume") and bool(_REPLICA.fullmatch(target) or _RELAY.fullmatch(target))


def _check_parts(steps: tuple[Step, ...], replicas: dict[str, int], brokers: int, where: str) -> None:
    for i, step in enumerate(steps):
        t = step.target or ""
        if (m := _REPLICA.fullmatch(t)) and not 1 <= int(m["n"]) <= replicas.get(m["svc"], 1) or \
                (m := _RELAY.fullmatch(t)) and replicas.get(m["svc"], 1) < 2:
            raise ScenarioError(f"{where}: steps[{i}].target {t!r}: needs [replicas] {m['svc']} = 2 or more "
                                f"(and no more than its count)")
        if (m := _NODE.fullmatch(t)) and not 1 <= int(m["n"]) <= brokers:
            raise ScenarioError(f"{where}: steps[{i}].target {t!r}: needs kafka_brokers = {m['n']} or more")


def _check_restores(steps: tuple[Step, ...], where: str) -> None:
    """A restore restores the scenario's one backup: a `backup` step must come first, and there is one of each."""
    kinds = [s.action for s in steps if s.action in ("backup", "restore")]
    if kinds and kinds not in (["backup"], ["backup", "restore"]):
        raise ScenarioError(f"{where}: steps: at most one `backup` and one `restore`, the backup first "
                            f"(found {', '.join(kinds)})")


def _step(raw: Any, i: int, where: str) -> Step:
    w = f"{where}: steps[{i}]"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{w}: expected a table ([[steps]]), not {raw!r}")
    for key in ("at", "action"):
        if key not in raw:
            raise ScenarioError(f"{w}: missing `{key}`")
    action = raw["action"]
    if action not in ACTIONS:
        raise ScenarioError(f"{w}.action: unknown action {action!r}; known: {', '.join(sorted(ACTIONS))}")
    targets, required, optional = ACTIONS[action]
    target = raw.get("target")
    if targets is None and target is not None:
        raise ScenarioError(f"{w}.target: `{action}` takes no target")
    if targets is not None and target not in targets and not _names_a_part(action, target):
        raise ScenarioError(f"{w}.target: `{action}` needs a target, one of {', '.join(targets)}; got {target!r}")
    params = {k: v for k, v in raw.items() if k not in ("at", "action", "target")}
    _unknown(set(params), set(required | optional), f"{w} ({action})")
    missing = sorted(required - set(params))
    if missing:
        raise ScenarioError(f"{w} ({action}): missing {', '.join(missing)}")
    if action == "poison" and "topics" in params:
        topics, known = params["topics"], consumed_topics()
        if not isinstance(topics, list) or not topics or any(t not in known for t in topics):
            raise ScenarioError(f"{w}.topics: a list of consumed topics ({', '.join(known)}), not {topics!r}")
    for key, value in params.items():
        if key.endswith("_rate") and not (isinstance(value, int | float) and 0 <= value <= 1):
            raise ScenarioError(f"{w}.{key}: a rate between 0 and 1, not {value!r}")
    return Step(parse_duration(raw["at"], where=f"{w}.at"), action, target, params)


def parse_scenario(data: dict[str, Any], *, where: str, default_name: str) -> Scenario:
    _unknown(set(data), _TOP, where)
    raw_load = data.get("load", {})
    if not isinstance(raw_load, dict):
        raise ScenarioError(f"{where}: [load] must be a table")
    _unknown(set(raw_load), _LOAD, f"{where}: [load]")
    rate = raw_load.get("rate", Load.rate)
    if not isinstance(rate, int | float) or isinstance(rate, bool) or rate <= 0:
        raise ScenarioError(f"{where}: load.rate must be a positive number of invoices per second, not {rate!r}")
    clients = raw_load.get("clients", 1)
    if not isinstance(clients, int) or isinstance(clients, bool) or not 1 <= clients <= 16:
        raise ScenarioError(f"{where}: load.clients must be an integer from 1 to 16, not {clients!r}")
    idem = raw_load.get("idempotency_key", True)
    if not isinstance(idem, bool):
        raise ScenarioError(f"{where}: load.idempotency_key must be true or false")
    red = raw_load.get("red_letters", 0.0)
    if not isinstance(red, int | float) or isinstance(red, bool) or not 0 <= red <= 1:
        raise ScenarioError(f"{where}: load.red_letters must be a share between 0 and 1, not {red!r}")
    load = Load(float(rate), parse_duration(raw_load.get("duration", Load.duration), where=f"{where}: load.duration"),
                clients, idem, float(red))
    raw_steps = data.get("steps", [])
    if not isinstance(raw_steps, list):
        raise ScenarioError(f"{where}: steps must be an array of tables ([[steps]])")
    steps = tuple(sorted((_step(s, i, where) for i, s in enumerate(raw_steps)), key=lambda s: s.at))
    settings = data.get("settings", {})
    if not isinstance(settings, dict) or not all(isinstance(v, dict) for v in settings.values()):
        raise ScenarioError(f"{where}: [settings.<service>] tables of FAPIAO_* = \"value\"")
    for svc, env in settings.items():
        if svc not in SERVICES:
            raise ScenarioError(f"{where}: settings.{svc}: not a service ({', '.join(SERVICES)})")
        bad = [k for k in env if not k.startswith("FAPIAO_")]
        if bad:
            raise ScenarioError(f"{where}: settings.{svc}: keys must be FAPIAO_* variables, not {', '.join(bad)}")
    expect = data.get("expect", {})
    if not isinstance(expect, dict):
        raise ScenarioError(f"{where}: [expect] must be a table")
    _unknown(set(expect), _EXPECT, f"{where}: [expect]")
    replicas = data.get("replicas", {})
    if not isinstance(replicas, dict) or any(k not in REPLICABLE or not isinstance(v, int) or isinstance(v, bool)
                                             or not 1 <= v <= 9 for k, v in replicas.items()):
        raise ScenarioError(f"{where}: replicas: a table of service = count (1 to 9), services "
                            f"{', '.join(REPLICABLE)}; not {replicas!r}")
    brokers = data.get("kafka_brokers", 1)
    if not isinstance(brokers, int) or isinstance(brokers, bool) or not 1 <= brokers <= 5:
        raise ScenarioError(f"{where}: kafka_brokers must be an integer from 1 to 5, not {brokers!r}")
    _check_parts(steps, replicas, brokers, where)
    _check_restores(steps, where)
    network = bool(data.get("network", any(s.action in NETWORK_ACTIONS for s in steps)))
    name = data.get("name", default_name)
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
        raise ScenarioError(f"{where}: name must be lower-case letters, digits and dashes, not {name!r}")
    return Scenario(name=name, description=str(data.get("description", "")).strip(), load=load, steps=steps,
                    settle=parse_duration(data.get("settle", "120s"), where=f"{where}: settle"),
                    settings={k: {kk: str(vv) for kk, vv in v.items()} for k, v in settings.items()},
                    network=network, expect=dict(expect), replicas=dict(replicas), kafka_brokers=brokers)


def load_scenario(path: Path) -> Scenario:
    """One scenario file; ScenarioError names the file and what is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None
    scenario = parse_scenario(data, where=str(path), default_name=path.stem)
    if scenario.name != path.stem:
        raise ScenarioError(f"{path}: name {scenario.name!r} differs from the file name {path.stem!r}")
    return Scenario(**{**scenario.__dict__, "path": path})


def catalogue(directory: Path = DRILLS_DIR) -> dict[str, Scenario]:
    """Every drills/*.toml by name, in file-name order."""
    return {p.stem: load_scenario(p) for p in sorted(directory.glob("*.toml"))}
