"""How much a membership-inference attack exposes, from its scores alone: the ROC curve, the
AUC and the true-positive rate at low false-positive rates, with bootstrap intervals over the
audited records, and the one-line :class:`Verdict` (thresholds in :func:`verdict`).

A score is higher for "more likely a member". The low-FPR regime is what matters: an attack
that confidently exposes a few records is a real leak even when its AUC is near 0.5. These
figures are a lower bound on leakage (see audit.py, which runs the attacks). Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The false-positive rates the TPR is reported at (as in the LiRA paper).
LOW_FPR = 0.001
FPR_1PCT = 0.01


class AuditError(RuntimeError):
    """The audit (audit.py, which raises it too) cannot run (no checkpoint, too little data, a trainer without losses, ...);
    the message is one line naming the cause and the fix."""


# ---- metrics on scores (higher score: "more likely a member") ----


def roc_curve(member_scores: np.ndarray, non_member_scores: np.ndarray) -> tuple[np.ndarray, ...]:
    """(fpr, tpr) of the rule "member if score >= t" for every distinct threshold t, from
    (0, 0) up to (1, 1), in increasing order."""
    scores = np.concatenate([member_scores, non_member_scores]).astype(np.float64)
    is_member = np.concatenate(
        [np.ones(len(member_scores), bool), np.zeros(len(non_member_scores), bool)]
    )
    order = np.argsort(-scores, kind="stable")
    scores, is_member = scores[order], is_member[order]
    # The last index of each run of equal scores: ties move together.
    last_of_run = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_positives = np.cumsum(is_member)[last_of_run]
    false_positives = last_of_run + 1 - true_positives
    tpr = np.r_[0.0, true_positives / max(len(member_scores), 1)]
    fpr = np.r_[0.0, false_positives / max(len(non_member_scores), 1)]
    return fpr, tpr


def auc(member_scores: np.ndarray, non_member_scores: np.ndarray) -> float:
    """ROC AUC: P(a member scores above a non-member), ties counting half (Mann-Whitney U)."""
    m, n = len(member_scores), len(non_member_scores)
    scores = np.concatenate([member_scores, non_member_scores]).astype(np.float64)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Average rank (1-based) of each distinct value, then of each score.
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = mean_rank[inverse]
    return float((ranks[:m].sum() - m * (m + 1) / 2.0) / (m * n))


def tpr_at_fpr(member_scores: np.ndarray, non_member_scores: np.ndarray, fpr: float) -> float:
    """The highest TPR of any threshold whose FPR is at most ``fpr``.

    With N non-members, FPRs below 1/N cannot be told from 0: the TPR is then that of the
    threshold above every non-member (see :func:`resolved`)."""
    fprs, tprs = roc_curve(member_scores, non_member_scores)
    return float(tprs[fprs <= fpr + 1e-12].max())


def resolved(fpr: float, non_members: int) -> bool:
    """Whether ``non_members`` are enough to measure a TPR at ``fpr`` (one false positive
    allowed at least); below that the TPR is the one at zero false positives."""
    return non_members * fpr >= 1.0 - 1e-9


@dataclass(frozen=True)
class AttackResult:
    """One attack's figures; intervals are bootstrap 95% percentile intervals."""

    name: str  # "loss" or "lira"
    title: str
    auc: float
    auc_ci: tuple[float, float]
    tpr_at_low_fpr: float  # at LOW_FPR (0.1%)
    tpr_at_low_fpr_ci: tuple[float, float]
    tpr_at_1pct_fpr: float
    tpr_at_1pct_fpr_ci: tuple[float, float]
    member_scores: np.ndarray = field(repr=False)
    non_member_scores: np.ndarray = field(repr=False)

    def roc(self) -> tuple[np.ndarray, ...]:
        return roc_curve(self.member_scores, self.non_member_scores)

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "auc": self.auc,
            "auc_ci": list(self.auc_ci),
            "tpr_at_fpr_0.001": self.tpr_at_low_fpr,
            "tpr_at_fpr_0.001_ci": list(self.tpr_at_low_fpr_ci),
            "tpr_at_fpr_0.01": self.tpr_at_1pct_fpr,
            "tpr_at_fpr_0.01_ci": list(self.tpr_at_1pct_fpr_ci),
        }


def evaluate_attack(
    name: str,
    title: str,
    member_scores: np.ndarray,
    non_member_scores: np.ndarray,
    seed: int = 0,
    bootstrap: int = 200,
) -> AttackResult:
    """AUC and TPRs of ``name``'s scores, with bootstrap intervals (members and non-members
    resampled independently, seeded). The intervals cover the choice of audited records, not
    the randomness of training the reference models."""
    members = np.asarray(member_scores, dtype=np.float64)
    non_members = np.asarray(non_member_scores, dtype=np.float64)
    if not len(members) or not len(non_members):
        raise AuditError("an attack needs at least one member and one non-member score")

    def figures(m: np.ndarray, n: np.ndarray) -> tuple[float, float, float]:
        return auc(m, n), tpr_at_fpr(m, n, LOW_FPR), tpr_at_fpr(m, n, FPR_1PCT)

    point = figures(members, non_members)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _stable_tag(name)]))
    samples = np.array(
        [
            figures(
                members[rng.integers(0, len(members), len(members))],
                non_members[rng.integers(0, len(non_members), len(non_members))],
            )
            for _ in range(bootstrap)
        ]
    ).reshape(-1, 3)
    if bootstrap:
        low, high = np.percentile(samples, [2.5, 97.5], axis=0)
    else:
        low = high = np.array(point)
    intervals = [(float(lo), float(hi)) for lo, hi in zip(low, high, strict=True)]
    return AttackResult(
        name,
        title,
        point[0],
        intervals[0],
        point[1],
        intervals[1],
        point[2],
        intervals[2],
        members,
        non_members,
    )


def _stable_tag(name: str) -> int:
    # hash() of a str changes per process; seeds must not.
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little")


# ---- the verdict ----

#: At or below this AUC an attack is no better than chance, for practical purposes: 0.55 is
#: within the sampling noise of a few hundred records (the CI half-width is ~0.04-0.08).
LOW_AUC = 0.55
#: At or above this AUC an attacker tells members apart on average far better than chance.
HIGH_AUC = 0.65
#: "low" also needs TPR@1% FPR at most this multiple of the FPR: a chance attack has TPR = FPR.
LOW_TPR_FACTOR = 3.0
#: "high" if some attack confidently exposes records: TPR at least this multiple of the FPR at
#: a low FPR (the LiRA paper's point: confident errors on a few records are the real leak).
HIGH_TPR_FACTOR = 10.0


@dataclass(frozen=True)
class Verdict:
    level: str  # "low", "moderate" or "high"
    text: str


def verdict(attacks: Sequence[AttackResult], non_members: int) -> Verdict:
    """One line a non-specialist can read, from the attacks' figures *and their intervals*:
    an AUC whose 95% interval holds 0.5 is not evidence of exposure, however high its point
    estimate (a small audit gave "moderate, AUC 0.57 [0.49, 0.64]").

    - high: an AUC >= HIGH_AUC whose interval excludes chance, or a TPR >= HIGH_TPR_FACTOR x
      FPR at the lowest FPR the non-members can measure (0.1% needs 1000 of them, 1% needs
      100);
    - low: no attack tells members from non-members with confidence (every AUC interval holds
      0.5, or every AUC <= LOW_AUC), and (where measurable) every TPR@1%FPR <= LOW_TPR_FACTOR x
      1%;
    - moderate: in between.

    A TPR at an FPR below 1/N (N non-members) is the TPR at zero false positives, which a chance
    attack reaches with probability ~1/N per record: it is reported but never decides, or
    small audits would be called "high" by luck.
    """
    strongest = max(attacks, key=lambda attack: attack.auc)
    figure = (
        f"AUC {strongest.auc:.2f} [{strongest.auc_ci[0]:.2f}, {strongest.auc_ci[1]:.2f}], "
        f"{strongest.title}"
    )
    above_chance = [attack for attack in attacks if attack.auc_ci[0] > 0.5]
    low_fprs = [
        (fpr, max(tpr(attack) for attack in attacks))
        for fpr, tpr in (
            (LOW_FPR, lambda a: a.tpr_at_low_fpr),
            (FPR_1PCT, lambda a: a.tpr_at_1pct_fpr),
        )
        if resolved(fpr, non_members)
    ]
    confident = [
        (fpr, best) for fpr, best in low_fprs[:1] if best >= HIGH_TPR_FACTOR * fpr and best > 0
    ]
    if any(attack.auc >= HIGH_AUC for attack in above_chance) or confident:
        detail = figure
        if confident:
            fpr, best = confident[0]
            detail += f"; {best:.1%} of them exposed at a {fpr:.1%} false-alarm rate"
        return Verdict(
            "high",
            "high exposure: an attacker tells your training records from others far better "
            f"than chance ({detail})",
        )
    tpr_1pct = dict(low_fprs).get(FPR_1PCT)
    small_or_uncertain = not above_chance or all(a.auc <= LOW_AUC for a in attacks)
    if small_or_uncertain and (tpr_1pct is None or tpr_1pct <= LOW_TPR_FACTOR * FPR_1PCT):
        if above_chance or strongest.auc <= LOW_AUC:
            return Verdict(
                "low",
                "low exposure: an attacker tells your training records from others no better "
                f"than chance ({figure})",
            )
        return Verdict(
            "low",
            "low exposure: an attacker tells your training records from others no better "
            f"than chance, as far as this audit can tell ({figure}: the interval holds 0.5; "
            "more records, --samples, narrow it)",
        )
    return Verdict(
        "moderate",
        "moderate exposure: an attacker tells your training records from others somewhat "
        f"better than chance ({figure})",
    )
