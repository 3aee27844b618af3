"""An empirical privacy audit of a peer's model on its own data: membership inference.

The question: given the peer's model (its current checkpoint), can an attacker tell the
records it was trained on (members: its training set) from records of the same kind it never
saw (non-members: its held-out test and validation sets)? Two attacks answer it:

- the **loss-threshold attack** (Yeom et al. 2018): a record is called a member when the
  model's loss on it is low. Score: minus the per-sample loss.
- **offline LiRA** (Carlini et al. 2022, "Membership Inference Attacks From First
  Principles", the offline variant): R reference models are trained like the peer's model on
  data that holds none of the audited records (half of the held-out records; the other half
  are the audit's non-members). For each audited record, the reference models' logit-scaled
  confidence in its true label, phi = log(p / (1 - p)), is the "OUT" distribution (a Gaussian
  with a per-record mean and, with few references, one global variance); the score is how
  far above it the audited model's phi lies (the one-sided likelihood of phi under OUT, here
  its z-score, which ranks records identically). Without class probabilities (a regression
  trainer, say) phi falls back to minus the loss.

Each attack gives the ROC AUC and the true-positive rate at 0.1% and 1% false-positive rate
(the low-FPR regime is what matters: an attack that confidently exposes a few records is a
real leak even when its AUC is near 0.5), with bootstrap 95% intervals over the audited
records. A :class:`Verdict` sums it up in one line (those figures and the verdict's thresholds
are exposure.py's; this module runs the attacks on a model and its data).

**An audit is a lower bound on leakage, not a guarantee.** A weak result means these two
attacks, with this many references and records, failed; a stronger attacker (more reference
models, other data, the model's whole history of shared backbones, the other peers' views)
may do better. Only a formal guarantee (differential privacy) bounds every attacker.

Everything is deterministic given the seed. Nothing is sent anywhere: the data comes from the
peer's configured loader, the model from its safetensors checkpoint (never unpickled).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset, default_collate

from gossiplearn.peer.learning.data import PeerData, TrainerError
from gossiplearn.peer.learning.split_model import SplitModel
from gossiplearn.peer.learning.trainer import TrainConfig, TrainerProtocol
from gossiplearn.privacy.exposure import (
    AttackResult,
    AuditError,
    Verdict,
    evaluate_attack,
    verdict,
)

#: A reference model's default budget is the peer's number of epochs over the reference data,
#: capped so that an audit of a long-running peer stays a matter of minutes on a CPU.
MAX_REFERENCE_EPOCHS = 100
MAX_REFERENCE_STEPS = 5000
_EVAL_BATCH = 256
# Floor for the global OUT standard deviation: identical references must not divide by zero.
_MIN_STD = 1e-6


# ---- what the audit needs of a peer ----


@dataclass
class AuditParts:
    """A peer, as the audit needs it: its model as checkpointed, its data, and how to build a
    fresh model and a trainer like its own (for the reference models)."""

    model: SplitModel
    data: PeerData
    #: a fresh model from the peer's factory, initialized from the given seed
    fresh_model: Callable[[int], SplitModel]
    #: a trainer like the peer's (training.trainer) for a model, data and config
    make_trainer: Callable[[SplitModel, PeerData, TrainConfig], TrainerProtocol]
    train_config: TrainConfig
    #: how many epochs over its training data the peer has trained (the reference budget)
    peer_epochs: float = 1.0
    #: names the trainer in error messages
    trainer_name: str = "the built-in trainer"


@dataclass(frozen=True)
class AuditSettings:
    references: int = 4
    samples: int = 500  # at most this many members, and as many non-members
    seed: int = 0
    reference_steps: int | None = None  # None: the peer's epochs over the reference data
    bootstrap: int = 200

    def __post_init__(self) -> None:
        if self.references < 0 or self.references == 1:
            raise ValueError(
                "references must be 0 (loss attack only) or at least 2 (a variance needs two)"
            )
        if self.samples < 1:
            raise ValueError("samples must be >= 1")
        if self.reference_steps is not None and self.reference_steps < 1:
            raise ValueError("reference steps must be >= 1")
        if self.bootstrap < 0:
            raise ValueError("bootstrap must be >= 0")


@dataclass(frozen=True)
class AuditReport:
    attacks: list[AttackResult]
    verdict: Verdict
    members: int
    non_members: int
    reference_models: int
    reference_samples: int
    reference_steps: int
    lira_statistic: str  # "logit_confidence" or "negative_loss"
    seed: int
    bootstrap: int

    def attack(self, name: str) -> AttackResult:
        return next(a for a in self.attacks if a.name == name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "members": self.members,
            "non_members": self.non_members,
            "reference_models": self.reference_models,
            "reference_samples": self.reference_samples,
            "reference_steps": self.reference_steps,
            "lira_statistic": self.lira_statistic,
            "seed": self.seed,
            "bootstrap": self.bootstrap,
            "attacks": {a.name: a.as_dict() for a in self.attacks},
            "verdict": {"level": self.verdict.level, "text": self.verdict.text},
            "lower_bound": True,
        }


# ---- datasets ----


def _take(dataset: Dataset, indices: np.ndarray) -> Dataset:
    if isinstance(dataset, TensorDataset):
        # Whole tensors stay whole: the trainers' fast path for batches.
        index = torch.as_tensor(indices, dtype=torch.long)
        return TensorDataset(*(tensor[index] for tensor in dataset.tensors))
    return Subset(dataset, indices.tolist())


def _concat(datasets: Sequence[Dataset]) -> Dataset:
    if all(isinstance(d, TensorDataset) for d in datasets):
        parts = [d.tensors for d in datasets]  # type: ignore[attr-defined]
        if len({len(p) for p in parts}) == 1:
            return TensorDataset(*(torch.cat(group) for group in zip(*parts, strict=True)))
    return ConcatDataset(datasets)


def _length(dataset: Dataset) -> int:
    return len(dataset)  # type: ignore[arg-type]


@dataclass(frozen=True)
class AuditSplit:
    """The audited records (members first, then as many non-members) and the reference data."""

    points: Dataset
    members: int
    reference: Dataset


def split_for_audit(data: PeerData, samples: int, seed: int) -> AuditSplit:
    """Balanced, seeded subsets: the held-out records (test, and validation if separate) are
    shuffled and halved; one half trains the reference models, the other gives the audit's
    non-members; as many members are drawn from the training set."""
    held_out = [data.test, data.validation] if data.separate_test else [data.test]
    pool = _concat(held_out)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    order = rng.permutation(_length(pool))
    half = len(order) // 2
    reference_idx, candidate_idx = order[:half], order[half:]
    count = min(samples, len(candidate_idx), _length(data.train))
    if count < 10 or half < 2:
        raise AuditError(
            f"too few records to audit: {_length(data.train)} training and {_length(pool)} "
            "held-out (at least 10 members, 10 non-members and 2 reference records are "
            "needed): give data.loader more held-out data"
        )
    member_idx = np.sort(rng.permutation(_length(data.train))[:count])
    non_member_idx = np.sort(candidate_idx[:count])
    points = _concat([_take(data.train, member_idx), _take(pool, non_member_idx)])
    return AuditSplit(points, count, _take(pool, np.sort(reference_idx)))


# ---- per-record statistics ----


@dataclass(frozen=True)
class RecordStats:
    loss: np.ndarray
    #: log(p / (1 - p)) of the true label, or None without class probabilities
    logit_confidence: np.ndarray | None


@torch.no_grad()
def _classification_stats(model: SplitModel, points: Dataset) -> RecordStats | None:
    """Cross-entropy and phi from the module's outputs, if they are class logits for
    (input, integer label) samples; None if not."""
    module = model.module
    module.eval()
    device = next(module.parameters()).device
    losses, phis = [], []
    try:
        for start in range(0, _length(points), _EVAL_BATCH):
            batch = [points[i] for i in range(start, min(start + _EVAL_BATCH, _length(points)))]
            inputs, labels = default_collate(batch)
            if not isinstance(labels, torch.Tensor) or labels.dtype not in (
                torch.int64,
                torch.int32,
                torch.int16,
                torch.uint8,
            ):
                return None
            logits = module(inputs.to(device)).double()
            labels = labels.to(device).long()
            if logits.ndim != 2 or logits.shape[1] < 2 or labels.shape != logits.shape[:1]:
                return None
            losses.append(F.cross_entropy(logits, labels, reduction="none").cpu())
            # phi = logit_y - logsumexp(other logits): log(p / (1 - p)) without rounding p.
            true = logits.gather(1, labels[:, None])[:, 0]
            others = logits.scatter(1, labels[:, None], -math.inf)
            phis.append((true - torch.logsumexp(others, dim=1)).cpu())
    except Exception:
        return None
    return RecordStats(torch.cat(losses).numpy(), torch.cat(phis).numpy())


def record_stats(parts: AuditParts, model: SplitModel, points: Dataset) -> RecordStats:
    """Each audited record's loss (the trainer's ``losses(split, "loss")`` if it has one, else
    cross-entropy on the model's outputs) and, for classifiers, its phi."""
    classification = _classification_stats(model, points)
    scoring = PeerData(points, points, points)
    loss: np.ndarray | None = None
    try:
        trainer = parts.make_trainer(model, scoring, parts.train_config)
        per_sample = getattr(trainer, "losses", None)
        if callable(per_sample):
            loss = np.asarray(per_sample("validation", "loss"), dtype=np.float64).reshape(-1)
            if loss.shape != (_length(points),) or not np.isfinite(loss).all():
                loss = None
    except Exception:
        loss = None
    if loss is None and classification is not None:
        loss = classification.loss
    if loss is None:
        raise TrainerError(
            f"training.trainer ({parts.trainer_name}) gives no per-sample losses: it has no "
            'losses(split, "loss") method returning one finite loss per sample, and the '
            "model's outputs are not class logits for (input, integer label) samples; add "
            "such a losses method to the trainer"
        )
    return RecordStats(loss, None if classification is None else classification.logit_confidence)


# ---- the audit ----


def reference_steps_for(parts: AuditParts, reference_samples: int) -> int:
    """The default budget of a reference model, in mini-batches: as many epochs over the
    reference data as the peer made over its training data (capped)."""
    epochs = min(max(parts.peer_epochs, 1.0), MAX_REFERENCE_EPOCHS)
    steps = math.ceil(epochs * reference_samples / parts.train_config.batch_size)
    return max(1, min(steps, MAX_REFERENCE_STEPS))


def train_reference(
    parts: AuditParts, reference: Dataset, steps: int, seed: int, index: int
) -> SplitModel:
    """One OUT model: a fresh model (its own initial weights) trained by the peer's kind of
    trainer on the reference data only, for ``steps`` mini-batches (config.steps_per_round;
    a user's trainer that ignores it trains one round of its own budget)."""
    model_seed = int(np.random.SeedSequence([seed, 2, index]).generate_state(1)[0])
    # A random subset as large as the peer's training set (when the pool is larger): the
    # reference models should generalize as the peer's model does, and differ from each other.
    size = min(_length(reference), _length(parts.data.train))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3, index]))
    reference = _take(reference, np.sort(rng.permutation(_length(reference))[:size]))
    model = parts.fresh_model(model_seed)
    config = replace(parts.train_config, steps_per_round=steps, seed=model_seed)
    trainer = parts.make_trainer(model, PeerData(reference, reference, reference), config)
    trainer.train_round()
    return model


def run_audit(
    parts: AuditParts,
    settings: AuditSettings = AuditSettings(),
    progress: Callable[[int, int], None] | None = None,
) -> AuditReport:
    """The audit of ``parts.model``; ``progress(done, total)`` after each reference model."""
    split = split_for_audit(parts.data, settings.samples, settings.seed)
    count = split.members
    target = record_stats(parts, parts.model, split.points)
    attacks = [
        evaluate_attack(
            "loss",
            "loss threshold",
            -target.loss[:count],
            -target.loss[count:],
            settings.seed,
            settings.bootstrap,
        )
    ]
    reference_samples = min(_length(split.reference), _length(parts.data.train))
    steps = settings.reference_steps or reference_steps_for(parts, reference_samples)
    statistic = "logit_confidence" if target.logit_confidence is not None else "negative_loss"
    if settings.references:
        target_phi = _phi(target)
        reference_phis = []
        for index in range(settings.references):
            if progress:
                progress(index, settings.references)
            model = train_reference(parts, split.reference, steps, settings.seed, index)
            reference_phis.append(_phi(record_stats(parts, model, split.points), statistic))
        if progress:
            progress(settings.references, settings.references)
        scores = lira_scores(target_phi, np.stack(reference_phis))
        attacks.append(
            evaluate_attack(
                "lira",
                "offline LiRA",
                scores[:count],
                scores[count:],
                settings.seed,
                settings.bootstrap,
            )
        )
    return AuditReport(
        attacks,
        verdict(attacks, count),
        count,
        count,
        settings.references,
        reference_samples,
        steps if settings.references else 0,
        statistic,
        settings.seed,
        settings.bootstrap,
    )


def _phi(stats: RecordStats, statistic: str | None = None) -> np.ndarray:
    if statistic != "negative_loss" and stats.logit_confidence is not None:
        return stats.logit_confidence
    return -stats.loss


def lira_scores(target_phi: np.ndarray, reference_phis: np.ndarray) -> np.ndarray:
    """Offline LiRA: the z-score of each record's phi under its OUT Gaussian (per-record mean
    over the R reference models, one global variance: R is too small for per-record ones).
    The one-sided likelihood 1 - Phi(z) is monotone in z, so z ranks records identically."""
    mean_out = reference_phis.mean(axis=0)
    residuals = reference_phis - mean_out
    # Pooled variance with R - 1 degrees of freedom per record.
    dof = max(residuals.size - residuals.shape[1], 1)
    std = max(float(np.sqrt((residuals**2).sum() / dof)), _MIN_STD)
    return np.asarray((target_phi - mean_out) / std, dtype=np.float64)


# ---- the plot ----


def plot_roc(report: AuditReport, path: Path) -> Path:
    """ROC curves of both attacks on log-log axes (as in the LiRA paper), with the diagonal
    (chance); PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    floor = 1.0 / max(report.non_members, 1)
    figure, axes = plt.subplots(figsize=(5, 5))
    try:
        for attack in report.attacks:
            fpr, tpr = attack.roc()
            # log axes cannot show 0: start at the smallest measurable rate.
            axes.plot(
                np.maximum(fpr, floor / 2),
                np.maximum(tpr, floor / 2),
                label=f"{attack.title} (AUC {attack.auc:.2f})",
            )
        axes.plot([floor / 2, 1], [floor / 2, 1], "k--", linewidth=0.8, label="chance")
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlim(floor / 2, 1)
        axes.set_ylim(floor / 2, 1)
        axes.set_xlabel("false positive rate")
        axes.set_ylabel("true positive rate")
        axes.set_title(f"membership inference: {report.verdict.level} exposure")
        axes.legend(loc="lower right")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        figure.savefig(path, dpi=100, bbox_inches="tight")
    finally:
        plt.close(figure)
    return path


# ---- a peer directory ----


def parts_from_directory(directory: Path, config: Any) -> tuple[AuditParts, Any]:
    """The audit's parts for the peer in ``directory`` (its PeerConfig ``config``): the model
    from its checkpoint, its data through its loader, its trainer. Returns (parts, checkpoint
    metadata). Read-only: the daemon may be running (checkpoints are replaced atomically)."""
    from gossiplearn.peer.config import CHECKPOINT_DIR
    from gossiplearn.peer.learning.builtin import MODEL_SEEDING, load_learning, split_model
    from gossiplearn.peer.learning.checkpoint import load_checkpoint
    from gossiplearn.peer.learning.data import ModelFactoryError, resolve
    from gossiplearn.peer.learning.trainer import make_trainer

    model, data, trainer, _ = load_learning(config)
    meta = load_checkpoint(Path(directory) / CHECKPOINT_DIR, model)
    if meta is None:
        raise AuditError(
            f"no checkpoint in {Path(directory) / CHECKPOINT_DIR} yet: run the daemon first "
            f"(gossiplearn run {directory}); it writes one after each round"
        )
    training = config.training
    factory = resolve(config.model.factory, "model.factory", ModelFactoryError)

    def fresh_model(seed: int) -> SplitModel:
        with MODEL_SEEDING:  # torch's generator is global (see load_learning)
            torch.manual_seed(seed)
            module = factory(**config.model.options)
        split: SplitModel = split_model(config, module)
        return split

    def build_trainer(model: SplitModel, data: PeerData, train_config: TrainConfig) -> Any:
        return make_trainer(training.trainer, model, data, train_config, training.options)

    train_config = training.to_train_config()
    n_train = max(int(getattr(trainer, "num_train_samples", 0)) or _length(data.train), 1)
    rounds = max(meta.rounds_completed, 1)
    if train_config.steps_per_round:
        epochs_per_round = train_config.steps_per_round * train_config.batch_size / n_train
    else:
        epochs_per_round = float(max(train_config.epochs, 1))
    parts = AuditParts(
        model,
        data,
        fresh_model,
        build_trainer,
        train_config,
        peer_epochs=rounds * epochs_per_round,
        trainer_name=training.trainer or "the built-in trainer",
    )
    return parts, meta
