"""Imports go one way: every module of the package may import only from its own layer or a lower one.

Layers, lowest first (docs/design.md, "Layers and import direction"):

    foundation   errors, settings and the small modules they and everyone else need
    store        store/ (state in Redis: the only modules that know key names)
    middlewares  middlewares/
    brokers      brokers/ (may import middlewares; no middleware imports a broker)
    setup        setup, the package's public face (__init__), ops/ (what needs a broker to answer)
    apps         cli/, dashboard/, actors/, demo/

Within the apps layer the dashboard never imports the CLI, and neither imports the brokers (they
open them through ops/). Every import counts, including function-level and ``TYPE_CHECKING``
ones: a lazy import against the direction still ties a lower layer to a higher one. The test
parses the source with ``ast`` (nothing is imported).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "dramatiq_fairway"
PACKAGE_DIR = Path(__file__).resolve().parents[2] / PACKAGE

# Every root module and subpackage, by the name under the package ("" is the package itself).
# A root module missing here fails test_every_root_module_has_a_layer: place it when you add it.
LAYERS: dict[str, set[str]] = {
    "foundation": {
        "errors",
        "settings",
        "connections",
        "redis_urls",
        "redis_cluster",
        "embedded",
        "encryption",
        "failures",
        "outage",
        "priority",
        "tenants",
    },
    "store": {"store"},
    "middlewares": {"middlewares"},
    "brokers": {"brokers"},
    # queues: the old path of ops.queues (docs/fairness.md names it).
    "setup": {"setup", "", "ops", "queues", "bulk"},
    # quickstart: the old path of demo.quickstart, a dramatiq app users may start.
    "apps": {"cli", "dashboard", "actors", "demo", "quickstart"},
}
RANK = {name: rank for rank, layer in enumerate(LAYERS.values()) for name in layer}

# Imports that are forbidden although they go down (or sideways) the layers.
FORBIDDEN: list[tuple[str, str, str]] = [
    ("dashboard", "cli", "the dashboard never imports the CLI: shared code belongs below both"),
    ("cli", "brokers", "the CLI reaches the brokers through ops/"),
    ("dashboard", "brokers", "the dashboard reaches the brokers through ops/"),
]

# Known violations, (importing module, imported module), to be moved (issue #19). Empty this list
# as they are fixed; test_known_violations_are_still_there fails on an entry that no longer holds.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    """``dramatiq_fairway/store/status.py`` → ``store.status``; the package's ``__init__`` → ``""``."""
    parts = list(path.relative_to(PACKAGE_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    base = PACKAGE_DIR.joinpath(*name.split(".")) if name else PACKAGE_DIR
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imported_modules(module: str, source: str, *, is_package: bool = False) -> set[str]:
    """The package's modules that ``source`` (the text of ``module``) imports, as names under the package."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".") if package else []
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([PACKAGE, *anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            # ``from x import y`` imports the module x.y when y is one, else a name of x.
            targets = [
                f"{base}.{alias.name}" if _is_module(_relative(f"{base}.{alias.name}")) else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                found.add(_relative(target))
    found.discard(module)
    return found


def _relative(target: str) -> str:
    """``dramatiq_fairway.store.status`` → ``store.status``; the package itself → ``""``."""
    return target.removeprefix(PACKAGE).removeprefix(".")


def _root(name: str) -> str:
    return name.partition(".")[0]


def _violations() -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        module = _module_name(path)
        for imported in _imported_modules(module, path.read_text(), is_package=path.name == "__init__.py"):
            importer_root, imported_root = _root(module), _root(imported)
            if importer_root not in RANK or imported_root not in RANK:
                continue  # reported by test_every_root_module_has_a_layer
            if RANK[imported_root] > RANK[importer_root]:
                found[module, imported] = "imports against the layers"
            for source, target, why in FORBIDDEN:
                if importer_root == source and imported_root == target:
                    found[module, imported] = why
    return found


def _layer_of(name: str) -> str:
    return next(layer for layer, members in LAYERS.items() if _root(name) in members)


def test_every_root_module_has_a_layer() -> None:
    roots = {""} | {
        path.stem if path.is_file() else path.name
        for path in PACKAGE_DIR.iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").is_file()
    }
    assigned = set(RANK)
    assert sorted(roots - assigned) == [], "place these root modules in a layer of tests/package/test_layers.py"
    assert sorted(assigned - roots) == [], "these layer entries name no module of the package"


def test_no_import_goes_against_the_layers() -> None:
    new = {pair: why for pair, why in _violations().items() if pair not in KNOWN_VIOLATIONS}
    lines = [
        f"{PACKAGE}.{importer} ({_layer_of(importer)}) imports {PACKAGE}.{imported} ({_layer_of(imported)}): {why}"
        for (importer, imported), why in sorted(new.items())
    ]
    assert lines == []


def test_known_violations_are_still_there() -> None:
    gone = sorted(KNOWN_VIOLATIONS - set(_violations()))
    assert gone == [], "fixed: remove these from KNOWN_VIOLATIONS in tests/package/test_layers.py"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from ..brokers.delivery import held_copy\n", {"brokers.delivery"}),
        ("from .. import settings\n", {"settings"}),
        ("from ..store import dead_letters\n", {"store.dead_letters"}),
        ("from ..errors import ConfigError\n", {"errors"}),
        ("import dramatiq_fairway.cli.dlq\n", {"cli.dlq"}),
        ("def f():\n    from ..cli import output\n", {"cli.output"}),
        ("import dramatiq\nfrom dramatiq.common import q_name\n", set()),
    ],
)
def test_imports_are_resolved_to_the_package_modules(source: str, expected: set[str]) -> None:
    assert _imported_modules("middlewares.probe", source) == expected
