"""The layout's rules, read from the source: one direction of imports, no import circle, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "logstore", "adapters", "replay", "sim", "callstate")


def imports(path: Path) -> set[str]:
    """First-party modules a file imports at module level (``from engine import events`` counts as
    engine.events; an import inside a function is a deliberate lazy one, made when it runs)."""
    out: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = [n for n in ast.walk(tree) if not isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    inner = {id(x) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
             for x in ast.walk(f)}
    for node in (n for n in top if id(n) not in inner):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] in PACKAGES}


def modules(package: str) -> dict[str, set[str]]:
    return {f"{package}.{p.stem}": imports(p) for p in sorted((ROOT / package).glob("*.py"))}


def test_engine_imports_no_other_package() -> None:
    bad = {m: sorted(i for i in deps if i.split(".")[0] != "engine") for m, deps in modules("engine").items()}
    assert {m: deps for m, deps in bad.items() if deps} == {}


def test_adapters_import_only_engine_events_and_replay_no_adapter() -> None:
    core = {m: sorted(i for i in deps if i.startswith("engine") and not i.startswith("engine.events")
                      and i != "engine")
            for m, deps in modules("adapters").items()}
    assert {m: deps for m, deps in core.items() if deps} == {}
    assert not [i for deps in modules("replay").values() for i in deps if i.startswith("adapters")]


def test_the_engine_has_no_import_circle() -> None:
    engine = modules("engine")
    graph = {m: {d for d in deps if d in engine} for m, deps in engine.items()}
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(m: str, path: list[str]) -> None:
        assert state.get(m) != 1, "import circle: " + " -> ".join([*path, m])
        if state.get(m) == 2:
            return
        state[m] = 1
        for d in graph[m]:
            visit(d, [*path, m])
        state[m] = 2

    for m in graph:
        visit(m, [])


def test_the_machines_modules_stay_small() -> None:
    machine = ["states", "records", "call", "output", "llm", "agent", "caller", "handlers", "timers", "machine",
               "playback", "context"]
    sizes = {m: len((ROOT / "engine" / f"{m}.py").read_text(encoding="utf-8").splitlines()) for m in machine}
    assert {m: n for m, n in sizes.items() if n > 400} == {}


def test_no_engine_module_is_large() -> None:
    """Issue 12: no engine module over ~400 lines (the store's backends and the live call's parts are split
    out: logstore/sqlite.py, logstore/postgres.py, engine/liveparts.py)."""
    sizes = {p.stem: len(p.read_text(encoding="utf-8").splitlines()) for p in (ROOT / "engine").glob("*.py")}
    assert {m: n for m, n in sizes.items() if n > 430} == {}


#: What only the I/O edges of engine/ may import: a clock, threads, sockets, files by descriptor, databases.
IO_MODULES = {"time", "threading", "socket", "select", "selectors", "subprocess", "fcntl", "uuid", "sqlite3",
              "sqlite_utils", "psycopg", "psycopg_pool", "aiohttp", "httpx", "urllib", "http"}


def test_the_core_reads_no_clock_and_opens_no_socket() -> None:
    """engine/ is a pure function of its events; only runtime.py (the live loop) and store.py (the log's
    interface) touch the world. The log's backends and writer thread live in logstore/."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "engine").glob("*.py")):
        if path.stem in ("runtime", "store"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        if names & IO_MODULES:
            found[path.stem] = sorted(names & IO_MODULES)
    assert found == {}


def test_logstore_builds_on_the_engine_only() -> None:
    bad = {m: sorted(i for i in deps if i.split(".")[0] not in ("engine", "logstore"))
           for m, deps in modules("logstore").items()}
    assert {m: deps for m, deps in bad.items() if deps} == {}
