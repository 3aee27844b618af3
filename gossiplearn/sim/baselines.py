"""Reference methods that gossiplearn is compared against, on the same shards and budget.

Each baseline takes the peers' data (:class:`~gossiplearn.peer.learning.data.PeerData`), a model
factory and the same :class:`TrainConfig` gossiplearn peers use (one round's local budget
included), runs ``rounds`` rounds and returns a :class:`MethodResult` (peer p's accuracy on its
own test data after every round). They train on the same training part gossiplearn peers do;
the validation part, which gossiplearn peers hold out to decide whether an average helps
them, is not used.

============  ===========================  ======================  ===================
method        averaged by the server       kept per peer           after averaging
============  ===========================  ======================  ===================
local         nothing                      the whole model         -
local-ft      nothing                      the whole model         ``finetune_head``
fedavg        every floating-point tensor  non-float buffers       -
fedavg-ft     every floating-point tensor  non-float buffers       ``finetune_head``
fedper        the backbone                 head and local buffers  ``finetune_head``
fedper-plain  the backbone                 head and local buffers  -
============  ===========================  ======================  ===================

* **local**: every peer trains alone, one ``train_local`` (one round's budget) per round.
  Sends nothing.
* **fedavg** (centralized FedAvg): one global model. Each round every peer starts from it and
  runs ``train_local``; the server replaces it by the weighted average of the peers' models.
  Peer p's accuracy is the global model's accuracy on p's test data.
  Each peer downloads and uploads the model once per round as float32.
* **fedper-plain** (centralized FedPer, as published; same backbone/head split as
  gossiplearn): each peer keeps its head; each round it starts from the global backbone, runs
  ``train_local``, and the server averages only the backbones (weighted). Traffic: the
  backbone, down and up, per round.
* **fedper**: fedper-plain, and then each peer fine-tunes its head on the new backbone
  (``finetune_head``) before it is evaluated. That is what a gossiplearn round does, so the
  two differ only in how the backbone is averaged (exact and central vs. gossip), not in
  local compute.
* **-ft** (equal budget): ``local-ft`` and ``fedavg-ft`` add the same head fine-tune after
  each round, so that every method spends what gossiplearn spends (one round's budget plus
  one head fine-tune). fedavg-ft fine-tunes a copy of the global head for each peer (kept for
  its evaluation only; the next round starts again from the global model: FedAvg with local
  fine-tuning), local-ft fine-tunes the peer's own head, which it keeps.

Each method counts the optimizer steps it takes (:mod:`gossiplearn.sim.steps`) and reports
them per peer and round in ``MethodResult.steps_per_round`` (train, head, total).

Weights: a peer weighs its training samples, capped at ``max_weight`` (default: no cap, the
textbook methods), which is how a gossiplearn network with ``round.max_weight`` weighs its
members: the simulation passes the same cap (equal weights with gossiplearn's default of 1),
so the methods differ in how they average, not in what they average towards.

All peers start from the same initial weights (``factory()`` under ``torch.manual_seed(seed)``,
run with torch's global generator saved and restored) and results are deterministic given
``seed`` and ``config.seed``. ``extra["train_loss"]`` is the peers' mean training loss in the
last round's ``train_local``. Each peer has its own :class:`Trainer`, so its shuffles follow its
own epoch counter exactly as a gossiplearn peer's would.

Memory: the three methods share one loop (:func:`_run`) over a single working module; per-peer
state is kept as tensor snapshots of only what the peer keeps to itself (a whole model for
local, heads for fedper, usually nothing for fedavg), so 50 peers cost 50 heads, not 50 models.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gossiplearn.peer.learning.data import PeerData
from gossiplearn.peer.learning.split_model import SplitModel
from gossiplearn.peer.learning.trainer import TrainConfig, Trainer
from gossiplearn.sim.results import MethodResult, accuracy_of, epsilon_spent
from gossiplearn.sim.steps import PhaseSteps

#: Returns a fresh module with ``backbone`` and ``head`` submodules (same init given torch seed).
ModelFactory = Callable[[], torch.nn.Module]
#: Called as ``progress(method_name, round_index)`` after each round (``round_index`` from 0).
Progress = Callable[[str, int], None]
Shards = Sequence[PeerData]
#: (the working SplitModel, a peer's data, its index) -> that peer's trainer (TrainerProtocol).
#: Built once per peer; the model is shared, each peer's tensors are swapped in before it trains.
TrainerFactory = Callable[[SplitModel, PeerData, int], Any]
#: Called as ``final_models(peer, model)`` after the last round, with the shared working
#: model holding that peer's final tensors: copy what you keep, the next peer reuses it.
FinalModels = Callable[[int, SplitModel], None]

# Tensors travel as float32, like gossiplearn's backbone vectors.
_WIRE_BYTES_PER_VALUE = 4

_State = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class _Scheme:
    """What distinguishes one baseline from another inside the shared loop."""

    name: str
    #: names of the state_dict entries the server averages (the rest stays with each peer)
    shared: Callable[[SplitModel], tuple[str, ...]]
    #: whether each peer fine-tunes its head after receiving the averaged tensors
    finetune_head: bool


def _nothing(split: SplitModel) -> tuple[str, ...]:
    return ()


def _float_tensors(split: SplitModel) -> tuple[str, ...]:
    # Integer buffers (BatchNorm batch counters) cannot be averaged; they stay per peer.
    state = split.module.state_dict()
    return tuple(sorted(name for name, tensor in state.items() if tensor.is_floating_point()))


def _backbone(split: SplitModel) -> tuple[str, ...]:
    return split.backbone_names


_LOCAL = _Scheme("local", _nothing, finetune_head=False)
_FEDAVG = _Scheme("fedavg", _float_tensors, finetune_head=False)
_FEDPER = _Scheme("fedper", _backbone, finetune_head=True)
#: Every baseline by name (``gossiplearn sim --methods``).
SCHEMES = {
    scheme.name: scheme
    for scheme in (
        _LOCAL,
        _Scheme("local-ft", _nothing, finetune_head=True),
        _FEDAVG,
        _Scheme("fedavg-ft", _float_tensors, finetune_head=True),
        _FEDPER,
        _Scheme("fedper-plain", _backbone, finetune_head=False),
    )
}
#: Called after every round with the method's result so far (its rounds done).
OnResult = Callable[[MethodResult], None]


def _builtin_trainer(config: TrainConfig) -> TrainerFactory:
    # Trained on the training part, measured on the test part (no acceptance here).
    def make(split: SplitModel, data: PeerData, peer: int = 0) -> Trainer:
        return Trainer(split, data.train, data.test, config)

    return make


def _initial_module(factory: ModelFactory, seed: int) -> torch.nn.Module:
    """``factory()`` under ``torch.manual_seed(seed)``, leaving torch's global generator as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def _snapshot(state: _State, names: Sequence[str]) -> dict[str, torch.Tensor]:
    return {name: state[name].detach().clone() for name in names}


def _copy(target: _State, source: _State, names: Sequence[str]) -> None:
    """In-place ``target[name] = source[name]``: reuses storage instead of allocating."""
    with torch.no_grad():
        for name in names:
            target[name].copy_(source[name])


def _run(
    scheme: _Scheme,
    shards: Shards,
    factory: ModelFactory,
    config: TrainConfig,
    rounds: int,
    seed: int,
    progress: Progress | None,
    max_weight: int | None,
    make_trainer: TrainerFactory | None = None,
    final_models: FinalModels | None = None,
    eval_every: int = 1,
    on_result: OnResult | None = None,
) -> MethodResult:
    """The loop all baselines share: per round, train every peer, average, (fine-tune heads),
    evaluate every peer (every ``eval_every`` rounds and after the last; a round not
    evaluated is a row of NaN)."""
    if not shards:
        raise ValueError("need at least one peer shard")
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    start = time.perf_counter()
    split = SplitModel(_initial_module(factory, seed))
    make = make_trainer or _builtin_trainer(config)
    trainers = [make(split, data, peer) for peer, data in enumerate(shards)]
    # state_dict() tensors alias the module's storage, so copying into them sets the module.
    state = split.module.state_dict()
    shared_names = scheme.shared(split)
    personal_names = tuple(sorted(set(state) - set(shared_names)))
    global_shared = _snapshot(state, shared_names)
    personal = [_snapshot(state, personal_names) for _ in trainers]
    samples = [
        trainer.num_train_samples
        if max_weight is None
        else min(trainer.num_train_samples, max_weight)
        for trainer in trainers
    ]

    def load(peer: int) -> None:
        _copy(state, global_shared, shared_names)
        _copy(state, personal[peer], personal_names)

    history: list[list[float]] = []
    losses: list[float] = []
    steps = PhaseSteps()
    result = MethodResult(name=scheme.name, accuracy_per_round=history, complete=False)
    values_shared = sum(global_shared[name].numel() for name in shared_names)
    for round_index in range(rounds):
        # Float64 accumulation: summing 50 float32 models must not lose the small updates.
        totals = {
            name: torch.zeros_like(global_shared[name], dtype=torch.float64)
            for name in shared_names
        }
        losses = []
        for peer, trainer in enumerate(trainers):
            load(peer)
            with steps.phase("train"):
                losses.append(trainer.train_round().get("loss", math.nan))
            for name in shared_names:
                totals[name].add_(state[name].to(torch.float64), alpha=samples[peer])
            _copy(personal[peer], state, personal_names)
        for name in shared_names:
            global_shared[name].copy_(totals[name] / sum(samples))

        accuracies = []
        evaluated = (round_index + 1) % eval_every == 0 or round_index + 1 == rounds
        for peer, trainer in enumerate(trainers):
            if not (scheme.finetune_head or evaluated):
                continue
            load(peer)
            if scheme.finetune_head:
                with steps.phase("head"):
                    trainer.finetune_head()
                _copy(personal[peer], state, personal_names)
            if evaluated:
                accuracies.append(accuracy_of(trainer.evaluate()))
        history.append(accuracies if evaluated else [math.nan] * len(trainers))
        result.bytes_per_peer = float((round_index + 1) * 2 * values_shared * _WIRE_BYTES_PER_VALUE)
        result.wall_s = time.perf_counter() - start
        result.steps_per_round = steps.per_peer_round(len(trainers), round_index + 1)
        result.extra = {"train_loss": float(np.mean(losses)), **epsilon_spent(trainers)}
        if on_result is not None:
            on_result(result)
        if progress is not None:
            progress(scheme.name, round_index)

    if final_models is not None:
        for peer in range(len(trainers)):
            load(peer)
            final_models(peer, split)
    # Every round each peer downloads the shared tensors and uploads its trained ones.
    result.wall_s = time.perf_counter() - start
    result.complete = True
    return result


def run_baseline(
    name: str,
    shards: Shards,
    factory: ModelFactory,
    config: TrainConfig,
    rounds: int,
    seed: int = 0,
    progress: Progress | None = None,
    max_weight: int | None = None,
    make_trainer: TrainerFactory | None = None,
    final_models: FinalModels | None = None,
    eval_every: int = 1,
    on_result: OnResult | None = None,
) -> MethodResult:
    """The baseline ``name`` (a key of :data:`SCHEMES`)."""
    return _run(
        SCHEMES[name],
        shards,
        factory,
        config,
        rounds,
        seed,
        progress,
        max_weight,
        make_trainer,
        final_models,
        eval_every,
        on_result,
    )


def run_local_only(
    shards: Shards,
    factory: ModelFactory,
    config: TrainConfig,
    rounds: int,
    seed: int = 0,
    progress: Progress | None = None,
    max_weight: int | None = None,
    make_trainer: TrainerFactory | None = None,
    final_models: FinalModels | None = None,
) -> MethodResult:
    """Every peer trains its own model on its own data only; nothing is sent."""
    return _run(
        _LOCAL,
        shards,
        factory,
        config,
        rounds,
        seed,
        progress,
        max_weight,
        make_trainer,
        final_models,
    )


def run_fedavg(
    shards: Shards,
    factory: ModelFactory,
    config: TrainConfig,
    rounds: int,
    seed: int = 0,
    progress: Progress | None = None,
    max_weight: int | None = None,
    make_trainer: TrainerFactory | None = None,
    final_models: FinalModels | None = None,
) -> MethodResult:
    """Centralized FedAvg: one global model, averaged over all peers every round."""
    return _run(
        _FEDAVG,
        shards,
        factory,
        config,
        rounds,
        seed,
        progress,
        max_weight,
        make_trainer,
        final_models,
    )


def run_fedper(
    shards: Shards,
    factory: ModelFactory,
    config: TrainConfig,
    rounds: int,
    seed: int = 0,
    progress: Progress | None = None,
    max_weight: int | None = None,
    make_trainer: TrainerFactory | None = None,
    final_models: FinalModels | None = None,
) -> MethodResult:
    """Centralized FedPer: the backbone is averaged, each peer keeps and fine-tunes its head."""
    return _run(
        _FEDPER,
        shards,
        factory,
        config,
        rounds,
        seed,
        progress,
        max_weight,
        make_trainer,
        final_models,
    )
