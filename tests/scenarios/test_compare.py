"""The comparisons (gossiplearn/testing/scenarios/compare.py): hivemind and Flower are not
installed here, so their benchmarks say they were skipped; gossiplearn's side of each runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gossiplearn.testing.scenarios.compare import (
    find_flower,
    find_hivemind,
    gossiplearn_sim,
    plot_round_sizes,
)


def test_without_an_interpreter_that_imports_them_the_comparisons_are_skipped() -> None:
    for find in (find_hivemind, find_flower):
        python, why = find("/nonexistent/python")
        if python is not None:
            pytest.skip(f"{find.__name__}: found one ({why})")
        assert "imports" in why


def test_round_sizes_are_plotted_from_their_json_lines(tmp_path: Path) -> None:
    lines = [
        {"bench": "round_sizes", "n": n, "secure_s": s, "plain_s": p}
        for n, s, p in ((1_000_000, 0.5, 0.4), (10_000_000, 4.0, 3.1))
    ]
    plot_round_sizes(json.loads(json.dumps(lines)), tmp_path / "plots" / "sizes.png")
    assert (tmp_path / "plots" / "sizes.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_gossiplearn_side_of_the_flower_comparison(tmp_path: Path) -> None:
    seconds, accuracy = gossiplearn_sim("memory", peers=3, rounds=2, epochs=1, out=tmp_path)
    assert seconds > 0
    assert 0.0 < accuracy <= 1.0
