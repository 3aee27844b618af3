"""A simulation's settings (:class:`SimConfig`, the options of ``gossiplearn sim``) and what
every method of a run is built from: the model, the trainer and its config, personal
acceptance, DP-SGD, and each peer's data. gossiplearn in every mode (memory.py, daemons.py) and
the baselines (given them by experiment.py) take their parts from here, so they train alike.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gossiplearn.peer.learning.data import DEFAULT_VALIDATION, PeerData

MODES = ("process", "inproc", "memory")
#: What ``--methods`` may name (see gossiplearn/sim/baselines.py for what each baseline does).
METHODS = ("gossiplearn", "local", "local-ft", "fedavg", "fedavg-ft", "fedper", "fedper-plain")
#: The methods a run compares when ``--methods`` is not given (``--no-baselines``: gossiplearn)
DEFAULT_METHODS = ("gossiplearn", "local", "fedavg", "fedper")
#: ``--weight``: equal weights (or samples capped at ``--max-weight``), or each peer's training
#: sample count with no cap short of the largest shard
WEIGHTS = ("equal", "samples")
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
    #: SGD momentum of the built-in trainer (``training.momentum``)
    momentum: float = 0.9
    #: epochs of head fine-tuning after each average (``training.head_epochs``; 0: none)
    head_epochs: int = 1
    hidden: tuple[int, ...] = (64, 64)
    #: gossiplearn: apply an average only if it does not hurt a peer's validation loss by
    #: more than ``acceptance_tolerance`` (relative)
    acceptance: bool = True
    acceptance_tolerance: float = 0.02
    acceptance_metric: str = "error"
    #: process/inproc: mean seconds between a peer's invitations (round.interval_s; the
    #: daemon's default, 10 s, paces a network whose rounds take seconds: a simulation's take
    #: tens of milliseconds, and waiting 1 s was most of process mode's time)
    interval_s: float = 0.3
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
    #: keyword arguments of ``model`` / ``data`` / ``trainer`` (``--model-option`` etc.); the
    #: data function is called as ``data(peer, peers, **data_options)``, the trainer built as
    #: ``Class(model, data, config, **trainer_options)`` (plus ``peer``/``peers`` if its
    #: constructor has parameters of those names)
    model_options: dict[str, Any] = field(default_factory=dict)
    data_options: dict[str, Any] = field(default_factory=dict)
    trainer_options: dict[str, Any] = field(default_factory=dict)
    #: the methods run, in this order (see METHODS)
    methods: tuple[str, ...] = DEFAULT_METHODS
    #: evaluate every method on every peer's test data every this many rounds (and after
    #: the last); daemons (process, inproc) evaluate after each of their rounds regardless
    eval_every: int = 1
    #: "samples": weigh each peer by its training samples with the cap at the largest shard
    #: (set once the data is loaded: :func:`effective_max_weight`)
    weight: str = "equal"
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
        """Raise ValueError naming the first bad setting by its ``gossiplearn sim`` flag."""
        from gossiplearn.sim.specs import DATASET_NAMES, check_partition, one_of

        if self.mode not in MODES:
            raise ValueError(f"--mode must be {one_of(MODES)}, got {self.mode!r}")
        if self.peers < 3:
            raise ValueError(f"--peers must be >= 3 (a group has 3 or more), got {self.peers}")
        if self.rounds < 1:
            raise ValueError(f"--rounds must be >= 1, got {self.rounds}")
        if not 3 <= self.group_size <= 16:
            raise ValueError(f"--group-size must be in 3..16, got {self.group_size}")
        if self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {self.epochs}")
        if self.steps_per_round < 0:
            raise ValueError(
                f"--steps-per-round must be >= 0 (0: whole epochs), got {self.steps_per_round}"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr must be > 0, got {self.lr:g}")
        if self.max_weight < 1:
            raise ValueError(f"--max-weight must be >= 1 (1: equal weights), got {self.max_weight}")
        if self.weight not in WEIGHTS:
            raise ValueError(f"--weight must be {one_of(WEIGHTS)}, got {self.weight!r}")
        if self.weight == "samples" and self.max_weight != 1:
            raise ValueError(
                "--weight samples sets the cap itself (the largest shard); drop --max-weight, "
                "or use --weight equal with --max-weight N for a cap of N"
            )
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"--momentum must be in [0, 1), got {self.momentum:g}")
        if self.head_epochs < 0:
            raise ValueError(
                f"--head-epochs must be >= 0 (0: no head fine-tune), got {self.head_epochs}"
            )
        if not 0 < self.validation < 1:
            raise ValueError(f"--validation must be a fraction in (0, 1), got {self.validation:g}")
        if self.eval_every < 1:
            raise ValueError(
                f"--eval-every must be >= 1 (1: after every round), got {self.eval_every}"
            )
        unknown = [name for name in self.methods if name not in METHODS]
        if unknown or not self.methods:
            raise ValueError(
                f"--methods takes a comma-separated list of {one_of(METHODS)}, got "
                f"{','.join(self.methods) or 'nothing'!r}"
            )
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"--methods names a method twice: {','.join(self.methods)!r}")
        for option, options, spec in (
            ("--model-option", self.model_options, "--model"),
            ("--data-option", self.data_options, "--data"),
            ("--trainer-option", self.trainer_options, "--trainer"),
        ):
            if options and not getattr(self, spec[2:]):
                raise ValueError(
                    f"{option} is for your {spec[2:]} ({spec} module:function), which is not "
                    f"given; add {spec}, or drop {option}"
                )
        if not self.data:  # --data brings its own split
            if self.dataset not in DATASET_NAMES:
                raise ValueError(
                    f"--dataset {self.dataset!r} is not a built-in dataset: choose "
                    f"{one_of(DATASET_NAMES)}, or give your own with --data"
                )
            try:
                check_partition(self.partition, self.dataset)
            except ValueError as exc:  # "partition 'X' is not ..."
                raise ValueError(f"--{exc}") from None
        if self.ring_bits not in (8, 16, 32):
            raise ValueError(f"--ring must be 32, 16 or 8, got {self.ring_bits}")
        exponent = math.log2(self.clip) if self.clip > 0 else math.nan
        if not (exponent.is_integer() and -16 <= exponent <= 16):
            raise ValueError(f"--clip must be a power of two in [2^-16, 2^16], got {self.clip}")
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
    """The ``model.options`` of a simulated peer (``--model-option``s for ``--model``)."""
    if config.model:
        return dict(config.model_options)
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
        momentum=config.momentum,
        head_epochs=config.head_epochs,
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

        function, options = user_model(config.model), dict(config.model_options)
        return (lambda: function(**options)) if options else function
    from gossiplearn.peer.learning.architectures import mlp

    options = model_options(config)
    return lambda: mlp(options["input_dim"], tuple(options["hidden"]), options["classes"])


def trainer_options(config: SimConfig, peer: int) -> dict[str, Any]:
    """The keyword arguments peer ``peer``'s trainer is built with (a daemon's
    ``training.options``): ``--trainer-option``s, and ``peer`` (its index, 0..peers-1) and
    ``peers`` if the trainer's constructor has parameters of those names."""
    if not config.trainer:
        return {}
    import inspect

    from gossiplearn.peer.learning.data import TrainerError, resolve

    options = dict(config.trainer_options)
    try:
        parameters = inspect.signature(
            resolve(config.trainer, "--trainer", TrainerError)
        ).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin): nothing more
        return options
    for name, value in (("peer", peer), ("peers", config.peers)):
        if name in parameters and name not in options:
            options[name] = value
    return options


def trainer_factory(config: SimConfig) -> Callable[..., Any]:
    """(SplitModel, PeerData, peer index) -> the trainer every method of this run trains
    through (peer ``peer``'s: see :func:`trainer_options`)."""
    from gossiplearn.peer.learning.trainer import make_trainer

    training = train_config(config)

    def make(model: Any, data: PeerData, peer: int = 0) -> Any:
        options = trainer_options(config, peer)
        return make_trainer(config.trainer, model, data, training, options, key="--trainer")

    return make


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

        return load_all(
            config.data, config.peers, config.validation, config.seed, config.data_options
        )
    from gossiplearn.sim.datasets import load_all_shards

    return load_all_shards(
        config.dataset,
        config.peers,
        config.partition,
        config.seed,
        config.holdout,
        config.validation,
    )
