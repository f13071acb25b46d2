"""The import rule: no service imports another service's package, and shared/ imports no service (nor the
fapiao tooling). What two services share is a contract in shared/contracts/. Read from the syntax tree, so
imports inside functions, relative imports and `importlib.import_module("...")` count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "__init__.py").is_file())


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, *, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, which is module `module`."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            # `from services import notifier` imports services.notifier, not only services
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (isinstance(node.func, ast.Name) and node.func.id in ("__import__", "import_module")
                   or isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")):
            found.append((node.lineno, node.args[0].value))
    return found


def violations(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """What `module` imports that the rule forbids."""
    parts = module.split(".")
    out = []
    for line, target in imported_modules(source, module, is_package=is_package):
        t = target.split(".")
        if parts[0] == "services" and len(parts) > 1:
            bad = t[0] == "services" and len(t) > 1 and t[1] != parts[1]
        elif parts[0] == "shared":
            bad = t[0] in ("services", "fapiao")
        else:
            bad = False
        if bad:
            out.append(f"{module}:{line} imports {target}")
    return out


def _modules(top: str) -> list[Path]:
    return sorted((ROOT / top).rglob("*.py"))


@pytest.mark.parametrize("top", ["services", "shared"])
def test_no_module_imports_across_the_rule(top: str) -> None:
    paths = _modules(top)
    assert len(paths) > 10, f"found only {len(paths)} modules under {top}/"
    found = [v for p in paths
             for v in violations(p.read_text(encoding="utf-8"), _module_name(p), is_package=p.name == "__init__.py")]
    assert found == [], "a service imports another service's package (share a contract in shared/contracts/):\n" \
                        + "\n".join(found)


def test_every_service_is_walked() -> None:
    assert {"issuer", "sync", "reconciler", "notifier", "taxstore"} <= set(SERVICES)
    for name in SERVICES:
        assert any(_module_name(p).startswith(f"services.{name}.") for p in _modules("services")), name


@pytest.mark.parametrize("source", [
    "from services.notifier.schemas import SubscriptionCreate",
    "import services.notifier.schemas as s",
    "import services.notifier",
    "from services import notifier",
    "from ..notifier import schemas",
    "from ..notifier.schemas import AlertData",
    "def later():\n    from services.notifier import api\n",
    "import importlib\nimportlib.import_module('services.notifier.app')",
])
def test_the_rule_sees_every_way_of_importing_another_service(source: str) -> None:
    assert violations(source, "services.issuer.api") != [], source


@pytest.mark.parametrize("source", [
    "from services.issuer import service",
    "from . import service",
    "from .backends import ReconcilerClient",
    "import services",
    "from shared.contracts.notifier import SubscriptionCreate",
])
def test_a_service_may_import_itself_and_shared(source: str) -> None:
    assert violations(source, "services.issuer.api") == [], source


@pytest.mark.parametrize("source", ["from services.issuer import service", "import services",
                                    "from fapiao.infra import postgres", "from services import notifier"])
def test_shared_imports_no_service(source: str) -> None:
    assert violations(source, "shared.contracts.cases") != [], source


def test_relative_imports_in_a_package_init_resolve_from_the_package() -> None:
    assert imported_modules("from . import api", "services.notifier", is_package=True) == [(1, "services.notifier.api")]
    assert violations("from ..issuer import api", "services.notifier", is_package=True) != []
