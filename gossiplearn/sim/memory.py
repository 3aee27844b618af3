"""Memory mode: the protocol machines over the in-memory network, no libp2p, for N up to
1000+. Rounds are synchronous: every round, peers train, are shuffled into groups of k, and
each group runs the real secure round (masks, shards, signatures) on the memnet.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from gossiplearn.crypto.identity import Identity
from gossiplearn.peer.learning.data import PeerData
from gossiplearn.sim.config import (
    Progress,
    SimConfig,
    acceptance_config,
    model_factory,
    round_section,
    trainer_factory,
)
from gossiplearn.sim.results import MethodResult, accuracy_of, epsilon_spent
from gossiplearn.sim.steps import PhaseSteps


def run_memory(
    config: SimConfig,
    shards: Sequence[PeerData],
    progress: Progress | None = None,
    node_factories: Mapping[int, Callable[..., Any]] | None = None,
    final_models: Callable[[int, Any], None] | None = None,
    on_result: Callable[[MethodResult], None] | None = None,
) -> MethodResult:
    """Synchronous rounds of the real protocol machines over the in-memory network: each
    round, every peer trains its budget and contributes its backbone, all peers are split
    into groups of 3..k, each group runs the real secure round (masks, shards, signatures,
    agreement), and each peer applies its group's average through the same
    :class:`~gossiplearn.peer.learning.learner.Learner` the daemon uses (personal acceptance
    included). ``node_factories``: peer index -> round machine factory (tests and
    benchmarks put adversaries there). ``final_models(peer, model)``: called with each
    peer's SplitModel after the last round (``sim --audit``). ``on_result(result)``: called
    after every round with the result so far. Peers are evaluated on their test data every
    ``config.eval_every`` rounds and after the last (a row of NaN for the others)."""
    import torch

    from gossiplearn.peer.learning.learner import Learner
    from gossiplearn.peer.learning.split_model import SplitModel
    from gossiplearn.protocol.events import RoundFinished, RoundUsageError
    from gossiplearn.protocol.node import Node
    from gossiplearn.sim.memnet import MemoryNetwork

    started = time.perf_counter()
    torch.manual_seed(config.seed)
    initial = model_factory(config)()
    make = trainer_factory(config)
    learners = []
    for peer, data in enumerate(shards):
        model = SplitModel(copy.deepcopy(initial))
        reference = None
        if config.local_reference:
            alone = SplitModel(copy.deepcopy(initial))
            reference = (alone, make(alone, data, peer))
        learners.append(
            Learner(model, make(model, data, peer), acceptance_config(config), reference=reference)
        )
    net = MemoryNetwork(seed=config.seed, latency_ms=2.0, jitter_ms=2.0)
    # The daemon's own mapping of [round] (virtual time: a round may take 10 minutes of it).
    round_config = replace(round_section(config), round_timeout_s=600.0).to_round_config()
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
    steps = PhaseSteps()
    result = MethodResult("gossiplearn", accuracy_per_round, complete=False)
    for round_index in range(config.rounds):
        for node, learner in zip(nodes, learners, strict=True):
            with steps.phase("train"):
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
                    with steps.phase("head"):
                        applied = learners[index_of[key]].apply(
                            outcome.average, outcome.contribution, evaluate=False
                        )
                    refused += not applied.accepted
                else:
                    aborted += 1
            outcomes.clear()
        done = round_index + 1
        if done % config.eval_every == 0 or done == config.rounds:
            accuracy_per_round.append([accuracy_of(learner.evaluate()) for learner in learners])
        else:
            accuracy_per_round.append([math.nan] * len(learners))
        bytes_per_peer = float(np.mean([net.bytes_sent[n.public_key] for n in nodes]))
        result.bytes_per_peer = bytes_per_peer
        result.wall_s = time.perf_counter() - started
        result.steps_per_round = steps.per_peer_round(len(learners), done)
        result.extra = {
            "rounds_aborted": aborted,
            "averages_refused": refused,
            "fell_back_to_local": sum(learner.fell_back for learner in learners),
            **epsilon_spent([learner.trainer for learner in learners]),
        }
        if on_result:
            on_result(result)
        if progress:
            progress(done, float(np.mean(accuracy_per_round[-1])), bytes_per_peer)
    if final_models:
        for peer, learner in enumerate(learners):
            final_models(peer, learner.model)
    result.complete = True
    return result


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
