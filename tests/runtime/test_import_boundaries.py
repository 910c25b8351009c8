"""The layout's import rules (DESIGN §1), checked on the source: every ``import`` statement of every module,
parsed with ``ast`` (imports inside functions and ``TYPE_CHECKING`` blocks count too).

- ``schemas`` imports only itself, the standard library and pydantic.
- ``actors.runtime`` (the shared runtime) imports no actor package.
- The gateway imports only ``schemas``, ``actors.runtime``, itself, the standard library and third-party libraries:
  it talks to the actors over the bus, never through their code.
- No actor package imports another (each may use ``schemas`` and ``actors.runtime``).
- Pure modules (the deciders and cores, listed below) import no I/O library and no module that is not pure.

A failure names the file, the line and the import that breaks a rule.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[2]
OWN_PACKAGES = ("schemas", "actors", "gateway", "arbstr", "bench", "tests")
ACTOR_PACKAGES = ("router", "pricing", "breaker", "vault")

# The deciders and cores: plain data in, plain data out (DESIGN §1). A module added to an actor that holds rules
# belongs here; an I/O shell does not.
PURE_MODULES = frozenset({
    # router: policy choice, complexity tier, candidate ranking
    "actors.router.complexity", "actors.router.features", "actors.router.keywords", "actors.router.lexicon",
    "actors.router.paths", "actors.router.policy", "actors.router.rank", "actors.router.scorer",
    "actors.router.text",
    # pricing: the price table, feed and node listings, merging, market state, Nostr announcement rules
    "actors.pricing.announcements", "actors.pricing.feeds", "actors.pricing.guard", "actors.pricing.listing",
    "actors.pricing.market", "actors.pricing.merge", "actors.pricing.routstr", "actors.pricing.table",
    "actors.pricing.units",
    # breaker: the circuit state machine
    "actors.breaker.machine",
    # vault: ledger fold, deciders, policy, partition state and snapshots, top-up and X-Cashu planning
    "actors.vault.book", "actors.vault.decide", "actors.vault.decide_holds", "actors.vault.decide_grants", "actors.vault.decided",
    "actors.vault.fold", "actors.vault.partition", "actors.vault.policy", "actors.vault.snapshot",
    "actors.vault.topup_plan", "actors.vault.xcashu_plan",
    "actors.vault.wallets.base", "actors.vault.wallets.cashu_coins", "actors.vault.wallets.macaroons",
})
# Not pure, yet a pure module may import it: it reads the tier model shipped in the package (or the operator's
# model file) once per process, a constant as far as the rules are concerned; callers may pass the model instead.
PURE_MAY_USE = frozenset({"actors.router.weights"})

# Libraries that reach the network, the disk, processes, clocks or randomness.
IO_LIBRARIES = frozenset({
    "nats", "aiohttp", "httpx", "requests", "duckdb", "grpc", "cashu", "websockets", "uvloop",
    "asyncio", "socket", "ssl", "select", "selectors", "subprocess", "multiprocessing", "threading", "signal",
    "os", "shutil", "tempfile", "fcntl", "io", "sqlite3", "http", "urllib.request", "ftplib", "smtplib",
    "time", "random", "secrets", "uuid",
})


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    module: str  # the absolute module imported (for ``from X import y``: ``X.y`` when y is a module, else X)

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line} imports {self.module}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _source_files() -> Iterator[Path]:
    for package in OWN_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if ".venv" not in path.parts:
                yield path


def _is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(path: Path) -> list[Import]:
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend(Import(path, node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base == "__future__":
                continue
            submodules = [f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}")]
            found.extend(Import(path, node.lineno, m) for m in submodules)
            if len(submodules) < len(node.names):
                found.append(Import(path, node.lineno, base))
    return found


ALL_IMPORTS: dict[str, list[Import]] = {_module_name(p): imports_of(p) for p in _source_files()}


def _top(module: str) -> str:
    return module.split(".")[0]


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _stdlib(module: str) -> bool:
    return _top(module) in sys.stdlib_module_names


def _report(rule: str, offending: list[Import]) -> str:
    return f"{rule}:\n" + "\n".join(f"  {i}" for i in offending)


def _modules_in(package: str) -> dict[str, list[Import]]:
    return {m: imps for m, imps in ALL_IMPORTS.items() if _within(m, package)}


def test_the_source_tree_is_found() -> None:
    assert "actors.runtime.host" in ALL_IMPORTS and "gateway.app" in ALL_IMPORTS
    missing = sorted(m for m in PURE_MODULES | PURE_MAY_USE if m not in ALL_IMPORTS)
    assert not missing, f"pure modules listed here that no longer exist: {missing}"


def test_schemas_import_only_pydantic_and_the_standard_library() -> None:
    bad = [i for imps in _modules_in("schemas").values() for i in imps
           if not (_within(i.module, "schemas") or _stdlib(i.module) or _top(i.module) == "pydantic")]
    assert not bad, _report("schemas/ may import only schemas, pydantic and the standard library", bad)


def test_the_runtime_imports_no_actor_package() -> None:
    bad = [i for imps in _modules_in("actors.runtime").values() for i in imps
           if _top(i.module) in OWN_PACKAGES and not (_within(i.module, "schemas")
                                                       or _within(i.module, "actors.runtime"))]
    assert not bad, _report("actors/runtime/ may import only schemas and itself of this project", bad)


def test_the_gateway_imports_only_schemas_and_the_runtime() -> None:
    bad = [i for imps in _modules_in("gateway").values() for i in imps
           if _top(i.module) in OWN_PACKAGES
           and not any(_within(i.module, p) for p in ("schemas", "gateway", "actors.runtime"))]
    assert not bad, _report("gateway/ may import only schemas and actors.runtime of this project "
                            "(it talks to the actors over the bus)", bad)


def test_no_actor_package_imports_another() -> None:
    bad: list[Import] = []
    for actor in ACTOR_PACKAGES:
        own = f"actors.{actor}"
        for imps in _modules_in(own).values():
            bad.extend(i for i in imps if _top(i.module) in OWN_PACKAGES
                       and not any(_within(i.module, p) for p in ("schemas", "actors.runtime", own)))
    assert not bad, _report("an actor package may import only schemas, actors.runtime and itself", bad)


def test_pure_modules_do_no_io_and_import_only_pure_modules() -> None:
    bad: list[Import] = []
    for module in sorted(PURE_MODULES):
        for i in ALL_IMPORTS[module]:
            if any(_within(i.module, lib) for lib in IO_LIBRARIES):
                bad.append(i)
            elif _within(i.module, "actors") and i.module not in PURE_MODULES | PURE_MAY_USE \
                    and i.module not in ("actors", "actors.router", "actors.pricing", "actors.breaker",
                                         "actors.vault", "actors.vault.wallets"):
                bad.append(i)
            elif _top(i.module) in ("gateway", "arbstr", "bench", "tests"):
                bad.append(i)
    assert not bad, _report("a pure module may import no I/O library and no module that is not pure", bad)


def test_the_rules_catch_a_violation() -> None:
    """The checker itself: a relative import resolves to the module it names, and an I/O import is seen."""
    fake = ROOT / "actors" / "vault" / "decide.py"
    found = {i.module for i in imports_of(fake)}
    assert "actors.vault.fold" in found and "actors.vault.policy" in found
    assert not any(_within(m, "nats") for m in found)
    shell = {i.module for i in imports_of(ROOT / "actors" / "vault" / "topup.py")}
    assert "nats.aio.client" in shell and "actors.vault.topup_plan" in shell
