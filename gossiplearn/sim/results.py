"""What one method (gossiplearn or a baseline) achieved in a simulation run.

Every method reports the same shape, so the report, the table and the plots treat them alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class MethodResult:
    #: "gossiplearn" or a baseline's name ("local", "fedavg", "fedper", ...)
    name: str
    #: accuracy_per_round[r][p]: peer p's accuracy on its own held-out data after round r+1
    #: (for gossiplearn: after the peer's (r+1)-th completed round); a round that was not
    #: evaluated (``--eval-every``) is a row of NaN.
    accuracy_per_round: list[list[float]] = field(default_factory=list)
    #: mean bytes each peer sent over the whole run (0 for local-only)
    bytes_per_peer: float = 0.0
    wall_s: float = 0.0
    #: method-specific figures (rounds aborted, clipped values, ...)
    extra: dict[str, float] = field(default_factory=dict)
    #: ``sim --audit``: the membership-inference audit of each peer's final model (keys in
    #: gossiplearn/sim/audit.py AUDIT_KEYS); None when not audited
    audit: dict[str, Any] | None = None
    #: optimizer steps per peer per round, {"train", "head", "total"} (see
    #: gossiplearn/sim/steps.py); None where they could not be counted (a user's trainer in
    #: process mode's daemons), a part None where only the total was
    steps_per_round: dict[str, float | None] | None = None
    #: False while the method runs, and for one a signal stopped
    complete: bool = True

    @property
    def rounds_done(self) -> int:
        return len(self.accuracy_per_round)

    @property
    def evaluated_rounds(self) -> list[int]:
        """The rounds (1-based) after which the peers were evaluated."""
        return [r + 1 for r, row in enumerate(self.accuracy_per_round) if _evaluated(row)]

    @property
    def final(self) -> list[float]:
        """Each peer's accuracy at the end of the run (after the last round evaluated)."""
        rows = [row for row in self.accuracy_per_round if _evaluated(row)]
        return rows[-1] if rows else []

    def summary(self) -> dict[str, float]:
        """Mean, 10th percentile and minimum of the peers' final accuracies."""
        final = np.asarray(self.final, dtype=np.float64)
        if final.size == 0:
            return {"mean": float("nan"), "p10": float("nan"), "min": float("nan")}
        return {
            "mean": float(final.mean()),
            "p10": float(np.percentile(final, 10)),
            "min": float(final.min()),
        }


def _evaluated(row: Sequence[float]) -> bool:
    return any(np.isfinite(np.asarray(row, dtype=np.float64)))


def accuracy_of(metrics: Mapping[str, float]) -> float:
    """The "accuracy" the simulation reports, from a trainer's ``evaluate()``."""
    if "accuracy" not in metrics:
        raise ValueError(
            f"the trainer's evaluate() returns {sorted(metrics)}: gossiplearn sim reports "
            '"accuracy" (higher is better), so return it too (for regression, e.g. the share '
            "of predictions within a tolerance)"
        )
    return float(metrics["accuracy"])


def epsilon_spent(trainers: Sequence[Any]) -> dict[str, float]:
    """``extra`` figures of a run with privacy: the mean and largest epsilon the peers spent."""
    spent = [t.privacy_spent()[0] for t in trainers if callable(getattr(t, "privacy_spent", None))]
    if not spent or not any(spent):
        return {}
    return {"epsilon_spent_mean": float(np.mean(spent)), "epsilon_spent_max": float(max(spent))}
