"""What an attack's scores expose (gossiplearn/privacy/exposure.py): AUC, TPR at low FPR,
bootstrap intervals and the verdict, on scores with known answers."""

from __future__ import annotations

import dataclasses

import numpy as np

from gossiplearn.privacy.exposure import auc, evaluate_attack, tpr_at_fpr, verdict


def test_auc_of_perfectly_separated_scores_is_one() -> None:
    assert auc(np.arange(10.0, 20.0), np.arange(0.0, 10.0)) == 1.0
    assert auc(np.arange(0.0, 10.0), np.arange(10.0, 20.0)) == 0.0


def test_auc_counts_ties_half() -> None:
    assert auc(np.ones(5), np.ones(7)) == 0.5
    # members {1, 2} vs non-members {1}: one win, one tie -> (1 + 0.5) / 2
    assert auc(np.array([1.0, 2.0]), np.array([1.0])) == 0.75


def test_identical_distributions_give_half_within_the_interval() -> None:
    rng = np.random.default_rng(0)
    result = evaluate_attack("loss", "loss", rng.normal(size=500), rng.normal(size=500), seed=0)
    low, high = result.auc_ci
    assert low <= 0.5 <= high
    assert abs(result.auc - 0.5) < 0.05
    assert 0.0 <= result.tpr_at_1pct_fpr <= 0.05


def test_tpr_at_fpr_on_a_hand_made_example() -> None:
    non_members = np.arange(10.0)  # 0..9
    members = np.array([5.5, 8.5, 9.5, 10.0])
    # At most 1 false positive of 10 (10%): threshold above 8 -> 8.5, 9.5, 10 -> 3/4.
    assert tpr_at_fpr(members, non_members, 0.1) == 0.75
    # No false positive allowed: above 9 -> 9.5, 10 -> 2/4.
    assert tpr_at_fpr(members, non_members, 0.0) == 0.5
    assert tpr_at_fpr(members, non_members, 0.01) == 0.5  # 1% of 10 is still 0 false positives
    assert tpr_at_fpr(members, non_members, 1.0) == 1.0


def test_bootstrap_is_seeded() -> None:
    rng = np.random.default_rng(1)
    members, non_members = rng.normal(0.3, 1, 200), rng.normal(0, 1, 200)
    first = evaluate_attack("loss", "loss", members, non_members, seed=3)
    again = evaluate_attack("loss", "loss", members, non_members, seed=3)
    assert first.auc_ci == again.auc_ci and first.tpr_at_1pct_fpr_ci == again.tpr_at_1pct_fpr_ci


def test_verdict_levels() -> None:
    rng = np.random.default_rng(2)
    chance = evaluate_attack("loss", "loss", rng.normal(size=500), rng.normal(size=500))
    assert verdict([chance], 500).level == "low"
    separated = evaluate_attack("loss", "loss", rng.normal(2, 1, 500), rng.normal(0, 1, 500))
    high = verdict([separated], 500)
    assert high.level == "high" and high.text.startswith("high exposure")
    middle = evaluate_attack("loss", "loss", rng.normal(0.45, 1, 500), rng.normal(0, 1, 500))
    assert 0.55 < middle.auc < 0.65
    assert verdict([middle], 500).level == "moderate"


def test_an_auc_whose_interval_holds_chance_is_not_called_exposure() -> None:
    """The issue's audit: "moderate ... AUC 0.57 [0.49, 0.64]". The point estimate is above
    LOW_AUC, but the interval holds 0.5: no evidence an attacker does better than chance."""
    rng = np.random.default_rng(2)
    middle = evaluate_attack("loss", "loss", rng.normal(0.45, 1, 500), rng.normal(0, 1, 500))
    uncertain = dataclasses.replace(middle, auc=0.57, auc_ci=(0.49, 0.64))
    found = verdict([uncertain], 500)
    assert found.level == "low"
    assert found.text == (
        "low exposure: an attacker tells your training records from others no better than "
        "chance, as far as this audit can tell (AUC 0.57 [0.49, 0.64], loss: the interval holds "
        "0.5; more records, --samples, narrow it)"
    )
    # The same AUC with an interval clear of 0.5 is moderate; a high one clear of it, high.
    assert verdict([dataclasses.replace(uncertain, auc_ci=(0.52, 0.62))], 500).level == "moderate"
    strong = dataclasses.replace(uncertain, auc=0.70, auc_ci=(0.48, 0.90))
    assert verdict([strong], 500).level == "low"  # a wide interval: not evidence
    assert verdict([dataclasses.replace(strong, auc_ci=(0.6, 0.8))], 500).level == "high"
