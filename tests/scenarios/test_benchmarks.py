"""benchmarks/ holds thin scripts only (flags, one scenario call, one JSON line): their code
lives in gossiplearn/testing/scenarios, where tests import it, and no test imports a script
by path. Checked statically: the scripts are parsed, never imported or run here. (Running a
script as a user would, to check a documented command, is not loading its code.)"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.py"))
MAX_LINES = 1_500
#: Besides the standard library and gossiplearn: privacy_bench's console (the simulations'
#: tables on stderr), hostile_bench's silencing of libp2p's logger.
OTHER_IMPORTS = {"rich", "libp2p"}


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_benchmarks_stay_thin() -> None:
    lines = {path.name: len(path.read_text().splitlines()) for path in BENCHMARKS}
    assert sum(lines.values()) <= MAX_LINES, lines


def test_each_benchmark_runs_a_scenario_of_the_package() -> None:
    for path in BENCHMARKS:
        modules = imported_modules(path)
        assert any(m.startswith("gossiplearn.testing.scenarios.") for m in modules), path.name
        others = {
            m
            for m in modules
            if m.split(".")[0] not in sys.stdlib_module_names | {"__future__", "gossiplearn"}
        }
        assert {m.split(".")[0] for m in others} <= OTHER_IMPORTS, (path.name, others)


def test_no_test_loads_a_file_from_benchmarks() -> None:
    wrong = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path == Path(__file__).resolve():
            continue
        text = path.read_text()
        names_it = re.search(r"""["']benchmarks(/|["'])""", text) is not None  # as a path
        if any(
            m.split(".")[0] == "benchmarks" or m == "tests.bench" for m in imported_modules(path)
        ):
            wrong.append(f"{path.name} imports it")
        elif names_it and re.search(r"spec_from_file_location|runpy|sys\.path\.insert", text):
            wrong.append(f"{path.name} names a file of it and may import it by path")
    assert not wrong, wrong
