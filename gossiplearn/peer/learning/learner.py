"""One peer's learning around the rounds, the same in the daemon and in every simulation mode.

A round's cycle, for one peer:

1. :meth:`Learner.train_round`: train for one round's fixed local budget
   (``training.steps_per_round`` mini-batches, or ``training.epochs`` epochs) and return the
   backbone: the contribution to exactly one round (a contribution is never sent twice).
2. The round runs (the daemon waits for it; the memory mode runs it synchronously).
3. :meth:`Learner.apply`: take in the group's average without losing local progress made since
   the contribution, fine-tune the head on it, and keep the result only if this peer's own
   validation loss is not worse than with its own backbone by more than a tolerance
   (personal acceptance); otherwise restore its own model and count the refusal.

Applying the change ``average - contribution`` to the current backbone (rather than
overwriting it with the average) keeps whatever training happened while the round ran: the
daemon version 1 overwrote it, so a peer that trained on while its contribution was averaged
lost those steps (the average was of the older vectors). With the daemon's default schedule
the peer does not train while its round runs (see builtin.py, ``training.overlap``), so the
current backbone *is* the contribution and the change lands exactly on the average, as in the
memory mode. Personal acceptance also bounds what a poisoning member can do to any one peer:
an average that hurts a peer's validation loss is not applied there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from gossiplearn.peer.learning.split_model import SplitModel
from gossiplearn.peer.learning.trainer import TrainerProtocol
from gossiplearn.privacy.dp import PrivacyBudgetSpent

#: An average is refused only if it is worse by more than this many standard errors of the
#: mean paired difference of per-sample validation losses: a validation set of a few dozen
#: samples cannot tell small differences from noise, and refusing on noise keeps a peer from
#: the averages it needs.
SIGNIFICANCE = 2.0
#: When the acceptance metric does not get better with the average (a tie, or worse within
#: noise), the per-sample loss of this name (when the trainer has one) also has a say: the
#: average is refused if that is worse beyond noise too. The 0-1 loss on a few dozen
#: validation samples is coarse: early in training both backbones get the same samples wrong,
#: and an average a poisoning member pulled to a near-constant backbone was accepted on a tie
#: (17/31 wrong either way) or within noise (14 -> 17 of 31); its ReLUs saturated, training
#: then diverged and the peer never learned again (the live poisoning test). Measured on
#: digits, memory mode, 4 peers, seeds 0-2 (`gossiplearn sim --mode memory --no-baselines`):
#: mean accuracy after 5 rounds +0.9, -0.9, +2.8 points, after 20 rounds +0.2, +0.5, +0.1
#: against deciding on the error alone; more averages refused (of the 20 peer-rounds of 5
#: rounds: 9, 5, 10 against 3, 1, 4; of 80: 16, 8, 29 against 5, 1, 9), at no cost in accuracy.
TIE_BREAK_METRIC = "loss"
#: ... and whatever the acceptance metric says, an average is refused if that loss is more than
#: this many times the peer's own: a backbone a poisoner pulled far (cross-entropy 8e7 against
#: 2) once passed on a better 0-1 loss (a near-random peer, 36/49 wrong -> 34/49), and training
#: from it blew the weights up to 7e3 and killed every ReLU: the backbone never moved again.
#: Benign averages stay far below it: over 240 peer-rounds on digits and 160 on fashion-mnist
#: (memory mode, seeds 0-2 and 0-1) the largest ratio of an accepted average was 1.45.
LOSS_BLOWUP = 3.0
#: What "validation loss" means for the decision: a metric the trainer's evaluate() returns,
#: lower is better. "error" (the 0-1 loss: misclassified or not) is the default for the
#: built-in classifier: right after an average, the head fine-tune leaves the model less
#: confident, so its cross-entropy is higher even where it classifies as well. Measured on
#: digits (4 peers, Dirichlet 0.3, 5 rounds, 3 seeds, memory mode): deciding on cross-entropy
#: refused 8 to 11 of 20 averages and left the worst peer 2 to 4 points below always
#: accepting; deciding on the error refused 1 or 2 and lost nothing. A user trainer names its
#: own (e.g. "mse").
DEFAULT_METRIC = "error"


@dataclass(frozen=True)
class AcceptanceConfig:
    """Personal acceptance: apply an average only if it does not hurt this peer's own
    validation loss (``metric``, see METRICS) by more than ``tolerance`` (relative: 0.02
    allows 2% worse), telling harm from noise (see SIGNIFICANCE)."""

    enabled: bool = True
    tolerance: float = 0.02
    metric: str = DEFAULT_METRIC

    def __post_init__(self) -> None:
        if not self.tolerance >= 0:
            raise ValueError("the acceptance tolerance must be >= 0")
        if not self.metric or not self.metric.isidentifier():
            raise ValueError(f"the acceptance metric must be a metric name, got {self.metric!r}")


def landed(average: np.ndarray, current: np.ndarray, contribution: np.ndarray) -> np.ndarray:
    """The backbone after taking in a round: its change (average - contribution) on top of
    whatever this peer learned since it contributed (``current``).

    Written as average + (current - contribution) so that, when nothing was learned since
    (the daemon's default schedule), the sum is the average bit for bit: every member then
    holds the same backbone (current + (average - contribution) rounds differently at each
    member)."""
    return np.asarray(average, np.float32) + (current - contribution)


@dataclass(frozen=True)
class Applied:
    """What became of one round's average at this peer."""

    accepted: bool
    own_loss: float  # validation loss with its own backbone, before
    new_loss: float  # with the average taken in and the head fine-tuned
    metrics: Mapping[str, float]  # the test metrics of the model kept
    #: Why it was refused: "worse" (the acceptance metric), "loss_worse" (no better on it,
    #: and the loss worse beyond noise), "loss_blowup" (see LOSS_BLOWUP), "privacy" (no
    #: privacy budget left for the head fine-tune); None if accepted.
    refusal: str | None = None


class Learner:
    """Trains, applies group averages and evaluates one peer's :class:`SplitModel`."""

    def __init__(
        self,
        model: SplitModel,
        trainer: TrainerProtocol,
        acceptance: AcceptanceConfig = AcceptanceConfig(),
        mix: float = 1.0,
        reference: tuple[SplitModel, TrainerProtocol] | None = None,
    ) -> None:
        """``reference``: a second model and its trainer, started from the same weights, that
        trains the same budget but never takes in an average: what this peer would have
        alone. After every round, if it does better on validation than the peer's own model,
        the peer falls back to it (a copy), so it never keeps a model validation says is worse
        than training alone, whatever the averages did to it, however gradually (twice the
        training work)."""
        if not 0 < mix <= 1:
            raise ValueError("mix must be in (0, 1]")
        self.model = model
        self.trainer = trainer
        self.acceptance = acceptance
        self.mix = mix
        self.reference = reference
        self.accepted = 0
        self.refused = 0
        self.fell_back = 0

    def train_round(self) -> np.ndarray:
        """One round's local budget; returns the backbone to contribute (a float32 copy)."""
        self.trainer.train_round()
        if self.reference is not None:
            self.reference[1].train_round()
        return self.model.get_backbone()

    def apply(
        self, average: np.ndarray, contribution: np.ndarray, evaluate: bool = True
    ) -> Applied:
        """Take in a round's ``average`` of the members' contributions (this peer's own was
        ``contribution``); keep it only if it does not hurt (see AcceptanceConfig).

        The validation data is evaluated once for the peer's own model and once for the
        average (one pass each with a trainer that has ``per_sample_metrics``; the tie-break
        loss comes from the same pass). ``evaluate``: also measure the model kept on the test
        data (``Applied.metrics``; the simulation, which evaluates when it reports, passes
        False and gets ``{}``)."""
        if average.shape != contribution.shape:
            raise ValueError("the average and the contribution differ in length")
        own, own_tie = self._figures(self.trainer, tie=self.acceptance.enabled)
        saved = self._snapshot()
        target = landed(average, self.model.get_backbone(), contribution)
        self.model.set_backbone(target, mix=self.mix)
        try:
            self.trainer.finetune_head()
        except PrivacyBudgetSpent:
            # No budget left to fit the head to the average: keep the peer's own model.
            self._restore(saved)
            self.refused += 1
            metrics = self.trainer.evaluate() if evaluate else {}
            return Applied(False, float(np.mean(own)), math.nan, metrics, "privacy")
        new, new_tie = self._figures(self.trainer, tie=False)
        own_loss, new_loss = float(np.mean(own)), float(np.mean(new))
        refusal = "worse" if self.acceptance.enabled and self._hurts(own, new) else None
        if refusal is None and own_tie is not None:
            if new_tie is None:
                new_tie = self._per_sample(self.trainer, TIE_BREAK_METRIC)
            if new_tie is not None:
                refusal = self._breaks(own, new, own_tie, new_tie)
        accepted = refusal is None
        if accepted:
            self.accepted += 1
        else:
            self._restore(saved)
            self.refused += 1
        if self.reference is not None:
            alone_model, alone = self.reference
            kept = new if accepted else own  # the figures of the model this peer now holds
            if np.mean(kept) > np.mean(self._validation(alone)):
                self._restore(alone_model.module.state_dict())
                self.fell_back += 1
        metrics = self.trainer.evaluate() if evaluate else {}
        return Applied(accepted, own_loss, new_loss, metrics, refusal)

    def _figures(self, trainer: TrainerProtocol, tie: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """(the acceptance metric, the tie-break loss or None) on the validation data. One
        pass with a trainer's ``per_sample_metrics`` (every per-sample metric at once; the
        loss comes with it, ``tie`` or not); else the acceptance metric, and the loss only if
        ``tie``, each asked for on its own."""
        metric = self.acceptance.metric
        every = getattr(trainer, "per_sample_metrics", None)
        if every is not None:
            figures = every("validation")
            if metric in figures:
                loss = figures.get(TIE_BREAK_METRIC) if metric != TIE_BREAK_METRIC else None
                if loss is None or not self.acceptance.enabled:
                    return np.asarray(figures[metric], dtype=np.float64), None
                return (
                    np.asarray(figures[metric], dtype=np.float64),
                    np.asarray(loss, dtype=np.float64),
                )
        figures_tie = self._per_sample(trainer, TIE_BREAK_METRIC) if tie else None
        return self._validation(trainer), figures_tie

    def _per_sample(self, trainer: TrainerProtocol, metric: str) -> np.ndarray | None:
        """``metric`` per validation sample, if the trainer can say (and it is not the
        acceptance metric itself); else None."""
        per_sample = getattr(trainer, "losses", None)
        if per_sample is None or metric == self.acceptance.metric:
            return None
        try:
            return np.asarray(per_sample("validation", metric), dtype=np.float64)
        except KeyError:
            return None

    def _validation(self, trainer: TrainerProtocol) -> np.ndarray:
        """The acceptance metric on the validation data: per sample if the trainer can say
        (``losses``), else the one figure of ``evaluate``."""
        metric = self.acceptance.metric
        per_sample = getattr(trainer, "losses", None)
        if per_sample is not None:
            try:
                return np.asarray(per_sample("validation", metric), dtype=np.float64)
            except KeyError:
                pass  # a metric it has no per-sample form of
        metrics = trainer.evaluate("validation")
        if metric not in metrics:
            raise KeyError(
                f"training.acceptance_metric = {metric!r}, but the trainer's evaluate() returns "
                f"{sorted(metrics)}: name one of those (lower is better)"
            )
        return np.asarray([metrics[metric]], dtype=np.float64)

    def _breaks(
        self, own: np.ndarray, new: np.ndarray, own_loss: np.ndarray, new_loss: np.ndarray
    ) -> str | None:
        """What the acceptance metric alone misses (see TIE_BREAK_METRIC, LOSS_BLOWUP): the
        loss blew up, or the metric did not improve and the loss is worse beyond noise."""
        own_mean, new_mean = float(np.mean(own_loss)), float(np.mean(new_loss))
        if not np.isfinite(new_mean) or new_mean > LOSS_BLOWUP * own_mean:
            return "loss_blowup"
        if float(np.mean(new - own)) >= 0 and self._hurts(own_loss, new_loss):
            return "loss_worse"
        return None

    def _hurts(self, own: np.ndarray, new: np.ndarray) -> bool:
        """The average is worse by more than the tolerance, and that is not noise (when the
        figures are per sample; a single figure is taken as it is)."""
        difference = new - own
        worse = float(difference.mean())
        if not np.isfinite(worse):
            return True
        margin = self.acceptance.tolerance * abs(float(own.mean()))
        noise = float(difference.std(ddof=1) / np.sqrt(len(difference))) if len(own) > 1 else 0.0
        return worse > margin and worse > SIGNIFICANCE * noise

    def evaluate(self) -> dict[str, float]:
        """The reported figures: the trainer's metrics on the test data."""
        return dict(self.trainer.evaluate("test"))

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.module.state_dict().items()}

    def _restore(self, saved: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, tensor in self.model.module.state_dict().items():
                tensor.copy_(saved[name])
