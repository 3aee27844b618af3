"""A seeded insider searching for the next attack, thousands of rounds on the in-memory network.

``gossiplearn.testing.chaos`` rewrites any frame the insider sends (equivocate, reorder,
replay from an earlier round or instance, drop, delay, corrupt, forge headers, relay old
statements as evidence and "proofs") and checks after every round that:

- no honest peer is convicted, refused or struck by an honest peer (``no_honest_blamed``);
- honest members that apply an average apply the same one, the true weighted average of the
  members' contributions, every weight within the cap (``same_true_average``);
- nothing the insider can compute from what it received reveals an honest vector or the
  difference of two (``only_sums``);
- every round of honest members only finishes (``honest_rounds_finish``).

Each property is then shown to fail with the defence behind it switched off: the same search
finds a counterexample (a strict xfail on :class:`InvariantViolated`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from gossiplearn.protocol.safeguards import Safeguards
from gossiplearn.testing.chaos import OPERATIONS, PROPERTIES, InvariantViolated, run_chaos

#: Seeds and rounds of the defended search: 2,000 rounds, ~15 s on a quiet 2-core machine.
SEEDS = range(4)
ROUNDS = 500


@pytest.mark.parametrize("seed", SEEDS)
def test_the_chaos_insider_breaks_no_property(seed: int) -> None:
    report = run_chaos(seed, ROUNDS)
    # The search was a search: every operation was used, the insider was in and out of
    # rounds, caught (proofs, group testing) and forgiven, and honest rounds went on.
    assert set(report.operations) >= set(OPERATIONS)
    assert report.with_insider >= ROUNDS // 4
    assert report.insider_refused_by > 0 and report.insider_struck > 0
    assert report.honest_only >= ROUNDS // 10
    assert report.honest_only_finished == report.honest_only
    assert report.aborts["equivocation"] > 0


def without(names: tuple[str, ...], properties: str, seeds: range = range(10)) -> Any:
    return pytest.param(
        replace(Safeguards(), **dict.fromkeys(names, False)),
        frozenset({properties}),
        seeds,
        id=f"{properties}-without_{'_and_'.join(names)}",
        marks=pytest.mark.xfail(raises=InvariantViolated, strict=True),
    )


@pytest.mark.parametrize(
    ("safeguards", "properties", "seeds"),
    [
        # An honest member framed with its statement from an earlier round of a reused group
        # id: the proof is valid once a slot names only the group id.
        without(("transcript_binding",), "no_honest_blamed"),
        # The ABORT's sender, and the member a timeout waits for, struck as in round v2.
        without(("group_testing",), "no_honest_blamed"),
        # Reducer equivocation unseen: honest members apply different averages.
        without(("confirm",), "same_true_average"),
        # A declared weight above the cap accepted.
        without(("weight_bounds",), "same_true_average"),
        # A reordered roster: two honest members' masks add up instead of cancelling.
        without(("roster_agreement", "transcript_binding"), "only_sums"),
    ],
)
def test_without_its_defence_the_search_breaks_the_property(
    safeguards: Safeguards, properties: frozenset[str], seeds: range
) -> None:
    for seed in seeds:
        run_chaos(seed, ROUNDS, safeguards=safeguards, properties=properties)


def test_the_properties_tested_are_all_the_properties() -> None:
    assert {
        "no_honest_blamed",
        "same_true_average",
        "only_sums",
        "honest_rounds_finish",
    } == PROPERTIES
