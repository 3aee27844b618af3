"""SECURITY.md names the test behind each claim: every test it names must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def test_every_test_named_in_security_md_exists() -> None:
    text = (ROOT / "SECURITY.md").read_text()
    named = re.findall(r"`([\w/]+\.py)(?:::\s*(test_\w+))?`", text)
    bare = re.findall(r"`(test_\w+)`", text)
    assert named and bare
    sources = {path: path.read_text() for path in TESTS.rglob("test_*.py")}
    missing = []
    for path, test in named:
        file = TESTS / path if not path.startswith("benchmarks/") else ROOT / path
        if not file.exists():
            missing.append(path)
        elif test and not re.search(rf"def {test}\(", file.read_text()):
            missing.append(f"{path}::{test}")
    for test in bare:
        if not any(re.search(rf"def {test}\(", source) for source in sources.values()):
            missing.append(test)
    assert not missing, f"SECURITY.md names tests that do not exist: {missing}"
