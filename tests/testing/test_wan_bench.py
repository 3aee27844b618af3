"""benchmarks/wan_bench.py: one JSON line per point at a small size (in the network lab: root
needed, skipped with one line otherwise), and its plot redrawn from the figures docs/ keeps,
as docs/internet.md shows the command."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from gossiplearn.testing.netlab import unavailable_reason
from gossiplearn.testing.scenarios.wan_rounds import lower_bound_s

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "wan_bench.py"
FIGURES = ROOT / "docs" / "wan_round_time.jsonl"


@pytest.mark.timeout(180)
def test_the_wan_bench_prints_one_json_line_per_point() -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"network lab unavailable: {reason}")
    args = ["--n", "1000", "--rtt", "40", "--mbit", "50", "--rounds", "1"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=170
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [json.loads(text) for text in done.stdout.splitlines() if text.strip()]
    assert line["bench"] == "wan" and line["n"] == 1000 and line["k"] == 4
    assert line["lower_bound_s"] == round(lower_bound_s(1000, 4, 40.0, 50.0), 3)
    # No round can beat seven one-way delays: the lab really delays every message.
    assert line["round_s"] >= 7 * 0.040 / 2
    assert line["aborted"] == 0


@pytest.mark.timeout(180)
def test_the_wan_bench_runs_a_deployed_peers_deadlines() -> None:
    """--deadlines default with --round keys: the peers run a [round] section's deadlines, and
    the line says what they were and what aborted (here nothing: a small model, a fast link)."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"network lab unavailable: {reason}")
    args = ["--n", "1000", "--rtt", "40", "--mbit", "50", "--rounds", "1", "--deadlines", "default"]
    args += ["--round", "assumed_mbit=10", "--round", "round_timeout_s=300"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=170
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [json.loads(text) for text in done.stdout.splitlines() if text.strip()]
    assert line["deadlines"] == "default"
    assert line["round_keys"] == {"assumed_mbit": 10.0, "round_timeout_s": 300.0}
    assert line["aborted"] == 0 and line["abort_reasons"] == []
    assert line["round_s"] is not None and line["round_s"] >= 7 * 0.040 / 2


def test_the_plot_is_redrawn_from_its_figures_as_written(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "internet.md").read_text(encoding="utf-8")
    command = next(
        line.strip("` ")
        for line in text.splitlines()
        if "benchmarks/wan_bench.py" in line and "--from-json" in line
    )
    (tmp_path / "benchmarks").symlink_to(ROOT / "benchmarks")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / FIGURES.name).write_bytes(FIGURES.read_bytes())
    words = shlex.split(command)
    assert words[:2] == ["python", "benchmarks/wan_bench.py"]
    done = subprocess.run(
        [sys.executable, *words[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "docs" / "wan_round_time.png").read_bytes()[:4] == b"\x89PNG"
