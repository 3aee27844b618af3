"""Run gossiplearn on a local network of N peers, in one of three modes.

- ``process``: N real daemons (``gossiplearn run``) as subprocesses on 127.0.0.1, each with
  its own directory, admitting each other: exactly what an organization runs.
- ``inproc``: N daemons (libp2p hosts and all) in one trio process.
- ``memory``: the protocol machines over the in-memory network, no libp2p: for N up to
  1000+. Rounds are synchronous: every round, peers train, are shuffled into groups of k,
  and each group runs the real secure round (masks, shards, signatures) on the memnet.

Every mode returns a :class:`MethodResult` for "gossiplearn" with each peer's accuracy on
its own held-out data after each of its rounds.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gossiplearn.crypto.identity import Identity, write_key_file
from gossiplearn.peer.config import IDENTITY_FILE, PeerConfig, save_config
from gossiplearn.peer.learning.data import DEFAULT_VALIDATION, PeerData
from gossiplearn.sim.results import MethodResult, accuracy_of, epsilon_spent

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
        if self.audit and self.mode != "memory":
            raise ValueError(
                f"--audit audits the final models the simulation holds, which --mode "
                f"{self.mode} leaves in its daemons; use --mode memory (or run gossiplearn "
                "audit OUT/peers/peer-I on each daemon's directory)"
            )
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


def train_config(config: SimConfig) -> Any:
    from gossiplearn.peer.learning.trainer import TrainConfig

    return TrainConfig(
        epochs=config.epochs,
        steps_per_round=config.steps_per_round,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        privacy=privacy_config(config),
    )


def acceptance_config(config: SimConfig) -> Any:
    from gossiplearn.peer.learning.learner import AcceptanceConfig

    return AcceptanceConfig(
        config.acceptance, config.acceptance_tolerance, config.acceptance_metric
    )


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


# ---- memory mode ------------------------------------------------------------------------


def run_memory(
    config: SimConfig,
    shards: Sequence[PeerData],
    progress: Progress | None = None,
    node_factories: Mapping[int, Callable[..., Any]] | None = None,
    final_models: Callable[[int, Any], None] | None = None,
) -> MethodResult:
    """Synchronous rounds of the real protocol machines over the in-memory network: each
    round, every peer trains its budget and contributes its backbone, all peers are split
    into groups of 3..k, each group runs the real secure round (masks, shards, signatures,
    agreement), and each peer applies its group's average through the same
    :class:`~gossiplearn.peer.learning.learner.Learner` the daemon uses (personal acceptance
    included). ``node_factories``: peer index -> round machine factory (tests and
    benchmarks put adversaries there). ``final_models(peer, model)``: called with each
    peer's SplitModel after the last round (``sim --audit``)."""
    import torch

    from gossiplearn.peer.learning.learner import Learner
    from gossiplearn.peer.learning.split_model import SplitModel
    from gossiplearn.protocol.events import RoundFinished, RoundUsageError
    from gossiplearn.protocol.node import Node, RoundConfig
    from gossiplearn.sim.memnet import MemoryNetwork

    started = time.perf_counter()
    torch.manual_seed(config.seed)
    initial = model_factory(config)()
    make = trainer_factory(config)
    learners = []
    for data in shards:
        model = SplitModel(copy.deepcopy(initial))
        reference = None
        if config.local_reference:
            alone = SplitModel(copy.deepcopy(initial))
            reference = (alone, make(alone, data))
        learners.append(
            Learner(model, make(model, data), acceptance_config(config), reference=reference)
        )
    net = MemoryNetwork(seed=config.seed, latency_ms=2.0, jitter_ms=2.0)
    round_config = RoundConfig(
        max_group_size=config.group_size, max_weight=config.max_weight, round_timeout_ms=600_000
    )
    factories = node_factories or {}
    nodes = [
        net.add(
            factories.get(i, Node)(
                Identity(np.random.default_rng([config.seed, i]).bytes(32)),
                round_config,
                rng=random.Random(config.seed * 1_000_003 + i),
                now_ms=int(net.now_ms),
            )
        )
        for i in range(len(shards))
    ]
    index_of = {node.public_key: i for i, node in enumerate(nodes)}
    rng = random.Random(config.seed)
    accuracy_per_round: list[list[float]] = []
    aborted = refused = 0
    for round_index in range(config.rounds):
        for node, learner in zip(nodes, learners, strict=True):
            vector = learner.train_round()
            weight = min(learner.trainer.num_train_samples, config.max_weight)
            node.set_contribution(vector, weight, learner.model.schema_hash)
        for group in groups_of(len(nodes), config.group_size, rng):
            with contextlib.suppress(RoundUsageError):  # it backs off (almost) everyone asked
                net.start_round(
                    nodes[group[0]].public_key, [nodes[i].public_key for i in group[1:]]
                )
        net.run()
        for key, outcomes in net.outcomes.items():
            for outcome in outcomes:
                if isinstance(outcome, RoundFinished):
                    applied = learners[index_of[key]].apply(outcome.average, outcome.contribution)
                    refused += not applied.accepted
                else:
                    aborted += 1
            outcomes.clear()
        accuracy_per_round.append([accuracy_of(learner.evaluate()) for learner in learners])
        bytes_per_peer = float(np.mean([net.bytes_sent[n.public_key] for n in nodes]))
        if progress:
            progress(round_index + 1, float(np.mean(accuracy_per_round[-1])), bytes_per_peer)
    if final_models:
        for peer, learner in enumerate(learners):
            final_models(peer, learner.model)
    return MethodResult(
        "gossiplearn",
        accuracy_per_round,
        bytes_per_peer=float(np.mean([net.bytes_sent[n.public_key] for n in nodes])),
        wall_s=time.perf_counter() - started,
        extra={
            "rounds_aborted": aborted,
            "averages_refused": refused,
            "fell_back_to_local": sum(learner.fell_back for learner in learners),
            **epsilon_spent([learner.trainer for learner in learners]),
        },
    )


def groups_of(count: int, size: int, rng: random.Random) -> list[list[int]]:
    """A random split of ``count`` peers into groups of 3..``size`` that covers every peer:
    the fewest groups that can hold them all, sizes as even as possible (50 peers, k = 4:
    11 groups of 4 and 2 of 3). When no such split exists (4 or 5 peers with k = 3, 5 with
    k = 4), a random peer sits this round out, and the rest are split."""
    order = list(range(count))
    rng.shuffle(order)
    while len(order) >= 3:
        groups = -(-len(order) // size)  # the fewest that can hold everyone
        if 3 * groups <= len(order):
            base, extra = divmod(len(order), groups)
            sizes = [base + 1] * extra + [base] * (groups - extra)
            starts = list(itertools.accumulate(sizes, initial=0))
            return [order[a:b] for a, b in itertools.pairwise(starts)]
        order.pop()  # shuffled: a random peer waits for the next round
    return []


# ---- process and inproc modes: real daemons --------------------------------------------


def prepare_peers(out_dir: Path, config: SimConfig) -> list[Path]:
    """Create one peer directory per peer (identity, documented config), admitting each other."""
    from gossiplearn.peer.net.ports import free_port
    from gossiplearn.sim.datasets import DATASETS

    peers_dir = out_dir / "peers"
    peers_dir.mkdir(parents=True, exist_ok=True)
    identities = [Identity.generate() for _ in range(config.peers)]
    ports = [free_port() for _ in identities]
    addresses = [
        f"/ip4/127.0.0.1/tcp/{port}/p2p/{identity.peer_id}"
        for port, identity in zip(ports, identities, strict=True)
    ]
    dirs = []
    for i, identity in enumerate(identities):
        directory = peers_dir / f"peer-{i}"
        directory.mkdir(exist_ok=True)
        write_key_file(directory / IDENTITY_FILE, identity)
        peer_config = PeerConfig()
        peer_config.peer.listen = [f"/ip4/127.0.0.1/tcp/{ports[i]}"]
        peer_config.peer.allow = [other.peer_id for other in identities if other is not identity]
        # A few bootstrap peers each; peer exchange finds the rest.
        neighbours = [(i + step) % config.peers for step in (1, 2, 3) if step < config.peers]
        peer_config.peer.bootstrap = [addresses[j] for j in dict.fromkeys(neighbours) if j != i]
        peer_config.discovery.ping_interval_s = 1.0
        peer_config.discovery.max_neighbours = max(16, config.group_size * 2)
        peer_config.round.group_size = config.group_size
        peer_config.round.max_weight = config.max_weight
        peer_config.round.interval_s = config.interval_s
        if config.model:
            peer_config.model.factory = config.model
        peer_config.model.options = model_options(config)
        if config.data:
            peer_config.data.loader = "gossiplearn.sim.user:load_shard"
            peer_config.data.options = {
                "function": config.data,
                "peer": i,
                "peers": config.peers,
                "validation": config.validation,
                "seed": config.seed,
            }
        else:
            peer_config.data.loader = DATASETS[config.dataset].loader
            peer_config.data.options = {
                "shard": f"{i}/{config.peers}",
                "partition": config.partition,
                "seed": config.seed,
                "holdout": config.holdout,
                "validation": config.validation,
            }
        training = peer_config.training
        training.trainer = config.trainer
        training.epochs = config.epochs
        training.steps_per_round = config.steps_per_round
        training.batch_size = config.batch_size
        training.lr = config.lr
        training.seed = config.seed
        training.acceptance = config.acceptance
        training.acceptance_tolerance = config.acceptance_tolerance
        training.acceptance_metric = config.acceptance_metric
        training.overlap = config.overlap
        training.local_reference = config.local_reference
        if config.dp_epsilon:
            privacy = peer_config.privacy
            privacy.enabled = True
            privacy.epsilon = config.dp_epsilon
            privacy.delta = config.dp_delta
            privacy.max_grad_norm = config.dp_max_grad_norm
            privacy.rounds = config.rounds
        peer_config.status.port = free_port()
        save_config(directory, peer_config)
        dirs.append(directory)
    return dirs


def _fetch_status(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as response:
            return dict(json.load(response))
    except (OSError, ValueError):
        return None


def _budget_s(config: SimConfig, timeout_s: float | None) -> float:
    """How long real daemons get to finish their rounds: start-up plus 30 s a round."""
    return timeout_s if timeout_s is not None else 120 + 30 * config.rounds


def _rounds_done(documents: Sequence[dict[str, Any] | None]) -> list[int]:
    """Rounds each peer has completed and taken in (a round counts as completed before its
    average is taken in and its history entry written: stopping on ``completed`` alone once
    left peers "short" of a round whose entry was a moment away)."""
    return [
        d["rounds"]["completed"] - d["rounds"].get("taking_in", 0) if d else 0 for d in documents
    ]


def _bytes_sent(document: dict[str, Any] | None) -> int:
    return sum(n["bytes_out"] for n in document["neighbours"]) if document else 0


def _accuracies_after(documents: Sequence[dict[str, Any] | None], round_: int) -> list[float]:
    """Each peer's accuracy after its ``round_``-th round (1-based), from its status history;
    a peer short of rounds gives its latest accuracy. The progress bar and the results table
    both read this, so they show the same figure."""
    row = []
    for document in documents:
        history = (document or {}).get("rounds", {}).get("history", [])
        if round_ >= 1 and round_ <= len(history):
            row.append(float(history[round_ - 1]["accuracy"]))
        elif history:
            row.append(float(history[-1]["accuracy"]))
        else:
            row.append(float((document or {}).get("accuracy") or 0.0))
    return row


def _report(
    documents: Sequence[dict[str, Any] | None], rounds: int, progress: Progress | None
) -> None:
    if progress is None:
        return
    done = min(min(_rounds_done(documents)), rounds)
    progress(
        done,
        float(np.mean(_accuracies_after(documents, done))),
        float(np.mean([_bytes_sent(d) for d in documents])),
    )


def _result_from_documents(
    documents: Sequence[dict[str, Any] | None], rounds: int, wall_s: float
) -> MethodResult:
    """Each peer's accuracy after each of its first ``rounds`` rounds (see
    _accuracies_after; a peer short of rounds is counted in ``extra``)."""
    histories = [(d or {}).get("rounds", {}).get("history", []) for d in documents]
    return MethodResult(
        "gossiplearn",
        [_accuracies_after(documents, r) for r in range(1, rounds + 1)],
        bytes_per_peer=float(np.mean([_bytes_sent(d) for d in documents])),
        wall_s=wall_s,
        extra={
            "peers_short_of_rounds": sum(len(h) < rounds for h in histories),
            **_epsilon_from_documents(documents),
        },
    )


def _epsilon_from_documents(documents: Sequence[dict[str, Any] | None]) -> dict[str, float]:
    spent = [((d or {}).get("privacy") or {}).get("epsilon_spent") for d in documents]
    known = [float(e) for e in spent if e is not None]
    if not known:
        return {}
    return {"epsilon_spent_mean": float(np.mean(known)), "epsilon_spent_max": max(known)}


def start_peer(directory: Path) -> subprocess.Popen[bytes]:
    """``gossiplearn run DIRECTORY`` as a subprocess, its output appended to
    DIRECTORY/stdout.log, in a session of its own: Ctrl-C reaches only the caller, which
    then stops its peers in order (:func:`_stop_all`)."""
    with open(directory / "stdout.log", "ab") as log:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, "-m", "gossiplearn.cli", "run", str(directory)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            start_new_session=True,
        )


def run_process(
    config: SimConfig,
    out_dir: Path,
    progress: Progress | None = None,
    timeout_s: float | None = None,
) -> MethodResult:
    """N `gossiplearn run` subprocesses; stops them all (SIGTERM) when every peer has done
    ``config.rounds`` rounds, on timeout, or on Ctrl-C."""
    from gossiplearn.peer.config import load_config

    started = time.perf_counter()
    dirs = prepare_peers(out_dir, config)
    ports = [load_config(d).status.port for d in dirs]
    processes = [start_peer(directory) for directory in dirs]
    deadline = time.monotonic() + _budget_s(config, timeout_s)
    documents: list[dict[str, Any] | None] = [None] * len(dirs)
    try:
        while time.monotonic() < deadline:
            for i, port in enumerate(ports):
                documents[i] = _fetch_status(port) or documents[i]
                if processes[i].poll() is not None:
                    raise RuntimeError(
                        f"peer {i} exited early (code {processes[i].returncode}); "
                        f"see {dirs[i] / 'stdout.log'}"
                    )
            if min(_rounds_done(documents)) >= config.rounds:
                break
            _report(documents, config.rounds, progress)
            time.sleep(1.0)
    finally:
        _stop_all(processes)
    return _result_from_documents(documents, config.rounds, time.perf_counter() - started)


def _stop_all(processes: Sequence[subprocess.Popen[bytes]], grace_s: float = 10.0) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_inproc(
    config: SimConfig,
    out_dir: Path,
    progress: Progress | None = None,
    timeout_s: float | None = None,
) -> MethodResult:
    """N daemons (each its own libp2p host) in one trio process; stopped when every peer has
    done ``config.rounds`` rounds or on timeout."""
    import trio

    from gossiplearn.peer.daemon import Daemon

    started = time.perf_counter()
    dirs = prepare_peers(out_dir, config)
    budget = _budget_s(config, timeout_s)
    documents: list[dict[str, Any] | None] = [None] * len(dirs)

    async def main() -> None:
        peers = [Daemon(d) for d in dirs]
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(peer.run, stop)
            with trio.move_on_after(budget):
                while True:
                    await trio.sleep(1.0)
                    for i, peer in enumerate(peers):
                        if peer.ready:
                            documents[i] = peer.status_document()
                    _report(documents, config.rounds, progress)
                    if min(_rounds_done(documents)) >= config.rounds:
                        break
            stop.set()

    trio.run(main)
    return _result_from_documents(documents, config.rounds, time.perf_counter() - started)
