"""``gossiplearn sim --audit``: the membership-inference audit of every peer's final model,
per method, with the same code as ``gossiplearn audit`` (:mod:`gossiplearn.privacy.audit`).

Each peer's model is audited on that peer's own data: members are its training set,
non-members its held-out records (half of them train the reference models of offline LiRA).
Reference models are trained like the method's models: same factory, trainer, budget per
epoch and, under ``--dp-epsilon``, DP-SGD. Like every audit, the figures are a lower bound
on what leaks, not a guarantee.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from gossiplearn.peer.learning.data import PeerData, TrainerError
from gossiplearn.peer.learning.split_model import SplitModel
from gossiplearn.peer.learning.trainer import TrainConfig, make_trainer
from gossiplearn.privacy.audit import AuditParts, AuditSettings, run_audit
from gossiplearn.privacy.exposure import AuditError
from gossiplearn.sim.config import SimConfig, model_factory, train_config

#: One peer's final model, as a state_dict (tensors copied out of the working module).
ModelState = Mapping[str, torch.Tensor]
#: ``(method, peer, peers)`` before each peer's audit.
AuditProgress = Callable[[str, int, int], None]

AUDIT_KEYS = (
    "auc_loss",
    "auc_lira",
    "tpr_at_1pct_lira",
    "mean_auc_loss",
    "mean_auc_lira",
    "max_auc_lira",
)


def snapshot(model: SplitModel) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s state_dict, safe to keep after the model trains on."""
    return {name: t.detach().clone() for name, t in model.module.state_dict().items()}


def peer_epochs(config: SimConfig, data: PeerData) -> float:
    """How many epochs over its training data a peer made in ``config.rounds`` rounds (the
    reference models' budget)."""
    if not config.steps_per_round:
        return float(config.rounds * max(config.epochs, 1))
    samples = max(len(data.train), 1)  # type: ignore[arg-type]
    return config.rounds * config.steps_per_round * config.batch_size / samples


def audit_parts(config: SimConfig, data: PeerData, state: ModelState) -> AuditParts:
    """The audit's view of one simulated peer: its final model, its data, the run's factory
    and trainer."""
    factory = model_factory(config)

    def fresh_model(seed: int) -> SplitModel:
        # torch's generator is global: the caller's stream must not move.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return SplitModel(factory())

    def build_trainer(model: SplitModel, peer_data: PeerData, training: TrainConfig) -> Any:
        return make_trainer(config.trainer, model, peer_data, training, key="--trainer")

    model = fresh_model(config.seed)
    model.module.load_state_dict(dict(state))
    return AuditParts(
        model,
        data,
        fresh_model,
        build_trainer,
        train_config(config),
        peer_epochs=peer_epochs(config, data),
        trainer_name=config.trainer or "the built-in trainer",
    )


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def audit_models(
    config: SimConfig,
    shards: Sequence[PeerData],
    states: Sequence[ModelState],
    method: str,
    progress: AuditProgress | None = None,
) -> dict[str, Any]:
    """The ``audit`` entry of ``method`` in results.json: per-peer AUCs of the loss attack and
    of offline LiRA, LiRA's TPR at 1% FPR, and their mean / max over peers. A peer with too
    few records to audit gets null (and a line on stderr)."""
    settings = AuditSettings(references=config.audit_references, seed=config.seed, bootstrap=0)
    auc_loss: list[float | None] = []
    auc_lira: list[float | None] = []
    tpr_lira: list[float | None] = []
    for peer, (data, state) in enumerate(zip(shards, states, strict=True)):
        if progress:
            progress(method, peer, len(shards))
        try:
            report = run_audit(audit_parts(config, data, state), settings)
        except (AuditError, TrainerError) as exc:
            print(f"audit of {method} peer-{peer} skipped: {exc}", file=sys.stderr)
            auc_loss.append(None)
            auc_lira.append(None)
            tpr_lira.append(None)
            continue
        auc_loss.append(report.attack("loss").auc)
        lira = next((a for a in report.attacks if a.name == "lira"), None)
        auc_lira.append(None if lira is None else lira.auc)
        tpr_lira.append(None if lira is None else lira.tpr_at_1pct_fpr)
    known_lira = [v for v in auc_lira if v is not None]
    return {
        "auc_loss": auc_loss,
        "auc_lira": auc_lira,
        "tpr_at_1pct_lira": tpr_lira,
        "mean_auc_loss": _mean(auc_loss),
        "mean_auc_lira": _mean(auc_lira),
        "max_auc_lira": max(known_lira) if known_lira else None,
    }


def print_progress(method: str, peer: int, peers: int) -> None:
    """Progress of ``sim --audit`` on stderr (stdout holds the table)."""
    print(f"auditing {method}: peer {peer + 1}/{peers}", file=sys.stderr, flush=True)
