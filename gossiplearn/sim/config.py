"""A simulation's settings (:class:`SimConfig`, the options of ``gossiplearn sim``) and what
every method of a run is built from: the model, the trainer and its config, personal
acceptance, DP-SGD, and each peer's data. gossiplearn in every mode (memory.py, daemons.py) and
the baselines (given them by experiment.py) take their parts from here, so they train alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gossiplearn.peer.learning.data import DEFAULT_VALIDATION, PeerData

MODES = ("process", "inproc", "memory")
Progress = Callable[[int, float, float], None]  # (rounds done, mean accuracy, bytes per peer)


@dataclass(frozen=True)
class SimConfig:
    peers: int = 4
    rounds: int = 5
    dataset: str = "digits"
    partition: str = "dirichlet:0.3"
    group_size: int = 4
    mode: str = "process"
    seed: int = 0
    holdout: float = 0.25
    #: of each shard, held out of training for personal acceptance (gossiplearn only; the
    #: baselines train on the same training part)
    validation: float = DEFAULT_VALIDATION
    epochs: int = 1
    #: one round's local budget in mini-batches (0: ``epochs`` whole epochs), for every
    #: method and mode
    steps_per_round: int = 0
    batch_size: int = 32
    lr: float = 0.05
    hidden: tuple[int, ...] = (64, 64)
    #: gossiplearn: apply an average only if it does not hurt a peer's validation loss by
    #: more than ``acceptance_tolerance`` (relative)
    acceptance: bool = True
    acceptance_tolerance: float = 0.02
    acceptance_metric: str = "error"
    #: process/inproc: mean seconds between a peer's invitations
    interval_s: float = 1.0
    #: process/inproc: train the next budget while a round runs (training.overlap)
    overlap: bool = False
    #: each gossiplearn peer also trains a local-only reference and falls back to it when it
    #: is significantly better on validation (training.local_reference)
    local_reference: bool = False
    #: the network-wide weight cap (round.max_weight): 1, equal weights; above, each peer
    #: weighs its training samples, capped there
    max_weight: int = 1
    #: the ring of the secure sum (round.ring_bits: 32, or 16 or 8) and a narrow ring's clip
    #: (round.clip)
    ring_bits: int = 32
    clip: float = 8.0
    #: yours instead of the built-ins ("module:function"; see gossiplearn/sim/user.py): the
    #: model (an MLP of ``hidden`` if empty), each peer's data (``dataset`` if empty) and the
    #: trainer (the built-in one if empty); every method uses the same ones
    model: str = ""
    data: str = ""
    trainer: str = ""
    #: > 0: every method trains with DP-SGD under this total epsilon per peer, the noise
    #: derived for ``rounds`` rounds (the same clipping, noise and sampling for all)
    dp_epsilon: float = 0.0
    dp_delta: float = 1e-5
    dp_max_grad_norm: float = 1.0
    #: after each method, audit every peer's final model (membership inference, see
    #: gossiplearn/sim/audit.py); memory mode only: the daemons' models are not held here
    audit: bool = False
    #: reference models of each peer's offline LiRA (0: the loss attack only)
    audit_references: int = 2
    #: process or memory mode over a Ray cluster (see ray_peers.py, memory.py): its address
    #: ("auto": the one `ray start` set up here, "local": a new one for this run, or
    #: HOST:PORT); "" runs here. Each daemon holds ``peer_cpus`` CPUs and ``peer_gpus`` GPUs
    #: of its node (memory mode: one actor per CPU of the cluster).
    ray: str = ""
    peer_cpus: float = 1.0
    peer_gpus: float = 0.0

    def validate(self) -> SimConfig:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if self.peers < 3:
            raise ValueError("a simulation needs at least 3 peers (a group has 3 or more)")
        if self.rounds < 1:
            raise ValueError("rounds must be >= 1")
        if not 3 <= self.group_size <= 16:
            raise ValueError("group size must be in 3..16")
        if self.steps_per_round < 0:
            raise ValueError("steps per round must be >= 0 (0: whole epochs)")
        if self.max_weight < 1:
            raise ValueError("max weight must be >= 1 (1: equal weights)")
        if self.ring_bits not in (8, 16, 32):
            raise ValueError("--ring must be 32, 16 or 8")
        if self.audit and self.mode != "memory":
            raise ValueError(
                f"--audit audits the final models the simulation holds, which --mode "
                f"{self.mode} leaves in its daemons; use --mode memory (or run gossiplearn "
                "audit OUT/peers/peer-I on each daemon's directory)"
            )
        if self.ray and self.mode == "inproc":
            raise ValueError("--ray runs --mode process (daemons) or --mode memory, not inproc")
        if self.ray and self.audit:
            raise ValueError("--audit keeps the final models here: run it without --ray")
        if not (self.peer_cpus >= 0 and self.peer_gpus >= 0):
            raise ValueError("--peer-cpus and --peer-gpus must be >= 0")
        if self.audit_references < 0 or self.audit_references == 1:
            raise ValueError(
                "--audit-references must be 0 (the loss attack only) or at least 2 (LiRA "
                "needs a variance)"
            )
        acceptance_config(self)  # checks the tolerance and the metric
        from gossiplearn.peer.learning.data import resolve

        for option, spec in (("--model", self.model), ("--data", self.data)):
            if spec:
                resolve(spec, option)  # importable and callable, or a one-line error now
        if self.trainer:
            resolve(self.trainer, "--trainer")
        if self.dp_epsilon:
            from gossiplearn.privacy.dp import PrivacyError, require_opacus

            try:
                privacy_config(self)
                require_opacus()
            except PrivacyError as exc:
                raise ValueError(str(exc).replace("privacy.", "--dp-")) from None
        return self

    def as_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


def model_options(config: SimConfig) -> dict[str, Any]:
    """The ``model.options`` of a simulated peer (none for ``--model``)."""
    if config.model:
        return {}
    from gossiplearn.sim.datasets import DATASETS

    info = DATASETS[config.dataset]
    return {"input_dim": info.input_dim, "hidden": list(config.hidden), "classes": info.classes}


def privacy_config(config: SimConfig) -> Any:
    """The DP-SGD settings every method trains with (None without --dp-epsilon). The noise
    is seeded from --seed: a simulation is reproducible, not private against its operator."""
    from gossiplearn.privacy.dp import PrivacyConfig

    if not config.dp_epsilon:
        return None
    return PrivacyConfig(
        config.dp_epsilon,
        config.dp_delta,
        config.dp_max_grad_norm,
        rounds=config.rounds,
        noise_seed=config.seed,
    )


def round_section(config: SimConfig) -> Any:
    """The ``[round]`` section a simulated peer runs with: its options mapped to the keys a
    daemon reads (``--group-size`` is ``round.group_size``). Memory mode turns it into the
    round machine's :class:`~gossiplearn.protocol.config.RoundConfig` with the daemon's own
    :meth:`~gossiplearn.peer.config.RoundSection.to_round_config`."""
    from gossiplearn.peer.config import RoundSection

    return RoundSection(
        group_size=config.group_size,
        max_weight=config.max_weight,
        interval_s=config.interval_s,
        ring_bits=config.ring_bits,
        clip=config.clip,
    )


def training_section(config: SimConfig) -> Any:
    """The ``[training]`` section every method of a run trains with: the simulation's options
    mapped to the keys a daemon reads (the rest keep their defaults). The trainer's
    :class:`~gossiplearn.peer.learning.trainer.TrainConfig` and personal acceptance come from
    it as a daemon's do (:func:`train_config`, :func:`acceptance_config`)."""
    from gossiplearn.peer.config import TrainingSection

    return TrainingSection(
        epochs=config.epochs,
        steps_per_round=config.steps_per_round,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        acceptance=config.acceptance,
        acceptance_tolerance=config.acceptance_tolerance,
        acceptance_metric=config.acceptance_metric,
        local_reference=config.local_reference,
        overlap=config.overlap,
        trainer=config.trainer,
    )


def train_config(config: SimConfig) -> Any:
    return training_section(config).to_train_config(privacy_config(config))


def acceptance_config(config: SimConfig) -> Any:
    return training_section(config).to_acceptance_config()


def model_factory(config: SimConfig) -> Callable[[], Any]:
    if config.model:
        from gossiplearn.sim.user import model_factory as user_model

        return user_model(config.model)
    from gossiplearn.peer.learning.architectures import mlp

    options = model_options(config)
    return lambda: mlp(options["input_dim"], tuple(options["hidden"]), options["classes"])


def trainer_factory(config: SimConfig) -> Callable[[Any, PeerData], Any]:
    """(SplitModel, PeerData) -> the trainer every method of this run trains through."""
    from gossiplearn.peer.learning.trainer import make_trainer

    training = train_config(config)
    return lambda model, data: make_trainer(config.trainer, model, data, training, key="--trainer")


def check_parts(config: SimConfig, shards: Sequence[PeerData]) -> None:
    """With ``--model`` or ``--trainer``: build the model, split it, and have the trainer
    evaluate it once on the first peer's data, so that a model that does not fit the data,
    or a trainer without "accuracy", fails now in one line naming the option, not after the
    peers started. Raises ModelFactoryError or TrainerError."""
    if not (config.model or config.trainer):
        return
    import torch

    from gossiplearn.peer.learning.data import ModelFactoryError, TrainerError
    from gossiplearn.peer.learning.split_model import SplitModel, SplitModelError
    from gossiplearn.peer.learning.trainer import checked_module, first_evaluation

    name = f"--model {config.model!r}" if config.model else "the built-in MLP (--hidden)"
    torch.manual_seed(config.seed)
    try:
        module = model_factory(config)()
    except ModelFactoryError:
        raise
    except Exception as exc:
        raise ModelFactoryError(f"{name} failed: {type(exc).__name__}: {exc}") from exc
    try:
        model = SplitModel(checked_module(module, name))
    except SplitModelError as exc:
        raise ModelFactoryError(f"{name}: {exc}") from exc
    trainer = trainer_factory(config)(model, shards[0])
    data = f"--data {config.data!r}" if config.data else f"--dataset {config.dataset}"
    metrics = first_evaluation(
        trainer,
        name,
        data,
        "check the model against the data's shapes"
        + (", and --trainer's evaluate" if config.trainer else ""),
    )
    if "accuracy" not in metrics:
        raise TrainerError(
            f"--trainer {config.trainer!r}: evaluate() returns {sorted(metrics)}; the simulation "
            'reports "accuracy" (higher is better): return it too'
        )


def load_data(config: SimConfig) -> list[PeerData]:
    """Every peer's (train, validation, test): ``--data``'s, or the built-in dataset's split."""
    if config.data:
        from gossiplearn.sim.user import load_all

        return load_all(config.data, config.peers, config.validation, config.seed)
    from gossiplearn.sim.datasets import load_all_shards

    return load_all_shards(
        config.dataset,
        config.peers,
        config.partition,
        config.seed,
        config.holdout,
        config.validation,
    )
