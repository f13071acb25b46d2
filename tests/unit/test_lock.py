"""requirements.lock pins what runs: every package the project needs (its [dev] extra too, followed through their
own requirements) is in the lock, at the version this virtualenv has, which `make` installed from the lock.
A dependency added to pyproject.toml without `make lock` fails here, not on a fresh clone weeks later."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

LOCK = Path(__file__).resolve().parents[2] / "requirements.lock"
INSTALLER = {"pip", "setuptools", "wheel"}  # the virtualenv's own (pip freeze leaves them out; pip-audit needs pip)


def pinned() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"requirements.lock: {line!r} is not name==version"
            out[canonicalize_name(name)] = version
    return out


def needed(root: str = "fapiao-sync", extras: frozenset[str] = frozenset({"dev"})) -> set[str]:
    """The project's requirements, followed through every installed package's own (markers evaluated here)."""
    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        for spec in metadata.requires(name) or []:
            req = Requirement(spec)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (wanted or {""})):
                continue
            key = canonicalize_name(req.name)
            if key not in seen:
                seen.add(key)
                todo.append((req.name, frozenset(req.extras)))
    return seen


def test_every_package_the_project_needs_is_pinned_at_the_version_installed() -> None:
    lock = pinned()
    missing = sorted(needed() - set(lock) - INSTALLER)
    assert not missing, f"not in requirements.lock (run `make lock`): {missing}"
    differ = {n: (lock[n], metadata.version(n)) for n in needed() - INSTALLER
              if metadata.version(n) != lock[n]}
    assert not differ, f"requirements.lock and this virtualenv disagree (lock, installed): {differ}"
    assert {"fastapi", "aiokafka", "sqlalchemy", "asyncpg", "pytest"} <= set(lock)
