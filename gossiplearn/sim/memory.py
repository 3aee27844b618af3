"""Memory mode: the protocol machines over the in-memory network, no libp2p, for N up to
1000+. Rounds are synchronous: every round, peers train, are shuffled into groups of k, and
each group runs the real secure round (masks, shards, signatures) on the memnet.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import itertools
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
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
from gossiplearn.sim.results import MethodResult, accuracy_of


def run_memory(
    config: SimConfig,
    shards: Sequence[PeerData],
    progress: Progress | None = None,
    node_factories: Mapping[int, Callable[..., Any]] | None = None,
    final_models: Callable[[int, Any], None] | None = None,
    on_result: Callable[[MethodResult], None] | None = None,
    processes: int | None = None,
    ray: str = "",
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
    ``config.eval_every`` rounds and after the last (a row of NaN for the others).
    ``processes``: how many
    worker processes train, apply and evaluate (default: one per CPU from PARALLEL_FROM
    peers, else none: all in this process); the results are the same either way. ``ray``:
    a Ray cluster's address (see ray_peers.connect): the peers are split over one actor per
    CPU of the cluster instead, wherever Ray puts them, each group's round in one of them
    (rounds cross actors and nodes); the results are again the same."""
    started = time.perf_counter()
    peers = len(shards)
    # Over Ray, the actors build the learners and round machines; here, this process does.
    learners = {} if ray else build_learners(config, dict(enumerate(shards)))
    factories = node_factories or {}
    nodes = [] if ray else [make_node(config, i, factories.get(i)) for i in range(peers)]
    rng = random.Random(config.seed)
    plan = [groups_of(peers, config.group_size, rng) for _ in range(config.rounds)]
    count = processes if processes is not None else _processes(peers)
    if final_models or node_factories:
        count = 1  # final models handed over, adversaries observed: here, in this process
    if ray and (final_models or node_factories):
        raise ValueError("memory mode over Ray hands over no final models (--audit) or adversaries")
    accuracy_per_round: list[list[float]] = []
    aborted = refused = 0
    sent: Counter[int] = Counter()
    # What was built so far (models, data, round machines) lives as long as the run: out of
    # the collector's sight, whose full collections would otherwise walk all of it again
    # and again (and, in forked workers, touch and so copy every page they share).
    gc.freeze()
    with contextlib.ExitStack() as stack:
        stack.callback(gc.unfreeze)
        part = _Part(learners, nodes.__getitem__, config.max_weight, config.seed)
        rounds: Iterator[RoundRecord]
        if ray:
            pool = stack.enter_context(_RayPool(config, shards, ray))
            rounds = _in_steps(pool, plan, config.eval_every)
        elif count <= 1:
            rounds = _in_steps(_Serial(part), plan, config.eval_every)
        else:
            forked = stack.enter_context(_Forked(part, count))
            rounds = forked.rounds(plan, config.eval_every)
            # The workers hold the learners now: this process's copies can go (and the
            # pages they shared with the workers with them, as the workers train).
            learners.clear()
            part.learners.clear()
        result = MethodResult("gossiplearn", accuracy_per_round, complete=False)
        for done, record in enumerate(rounds, 1):
            refused += record.refused
            aborted += record.aborted
            sent.update(record.sent)
            accuracies = record.accuracies
            row = [accuracies[p] for p in range(peers)] if accuracies else [math.nan] * peers
            accuracy_per_round.append(row)
            bytes_per_peer = sum(sent.values()) / peers
            train_steps, head_steps, fell_back, spent = record.stats
            runs = max(peers * done, 1)
            result.bytes_per_peer = bytes_per_peer
            result.wall_s = time.perf_counter() - started
            result.steps_per_round = {
                "train": train_steps / runs,
                "head": head_steps / runs,
                "total": (train_steps + head_steps) / runs,
            }
            result.extra = {
                "rounds_aborted": aborted,
                "averages_refused": refused,
                "fell_back_to_local": fell_back,
                **_epsilon(spent),
            }
            if on_result:
                on_result(result)
            if progress:
                progress(done, float(np.mean(accuracy_per_round[-1])), bytes_per_peer)
    if final_models:
        for peer, learner in learners.items():
            final_models(peer, learner.model)
    result.complete = True
    return result


#: The virtual clock's start (ms), as the in-memory network's.
START_MS = 1_700_000_000_000


def build_learners(config: SimConfig, shards: Mapping[int, PeerData]) -> dict[int, Any]:
    """The learners of the peers in ``shards`` (peer -> data), each exactly as it is built
    whichever process builds it and whichever peers it builds with it."""
    import torch

    from gossiplearn.peer.learning.learner import Learner
    from gossiplearn.peer.learning.split_model import SplitModel

    torch.manual_seed(config.seed)
    initial = model_factory(config)()
    make = trainer_factory(config)
    learners = {}
    for peer, data in shards.items():
        model = SplitModel(copy.deepcopy(initial))
        reference = None
        if config.local_reference:
            alone = SplitModel(copy.deepcopy(initial))
            reference = (alone, make(alone, data, peer))
        learners[peer] = Learner(
            model, make(model, data, peer), acceptance_config(config), reference=reference
        )
    return learners


def make_node(config: SimConfig, peer: int, factory: Callable[..., Any] | None = None) -> Any:
    """Peer ``peer``'s round machine as created (the same in every process)."""
    from gossiplearn.protocol.node import Node

    # The daemon's own mapping of [round] (virtual time: a round may take 10 minutes of it).
    round_config = replace(round_section(config), round_timeout_s=600.0).to_round_config()
    return (factory or Node)(
        Identity(np.random.default_rng([config.seed, peer]).bytes(32)),
        round_config,
        rng=random.Random(config.seed * 1_000_003 + peer),
        now_ms=START_MS,
    )


#: From this many peers, memory mode runs in worker processes, one per CPU.
PARALLEL_FROM = 200

Contributions = dict[int, tuple[np.ndarray, int, bytes]]
#: What a share of the peers did so far: (training steps, head fine-tune steps, peers that
#: fell back to their local model, each trainer's epsilon spent).
Stats = tuple[int, int, int, list[float]]
Learned = tuple[int, dict[int, float], Contributions, Stats]
Finished = Mapping[int, Sequence[tuple[np.ndarray, np.ndarray]]]
#: A round's share of one process: (finished averages by peer, rounds aborted, bytes sent by
#: peer, the virtual time its last group ended).
NetResult = tuple[dict[int, list[tuple[np.ndarray, np.ndarray]]], int, dict[int, int], float]


#: What :meth:`_Part.step` did: (its round, how many peers it stepped, averages refused,
#: accuracies by peer, contributions by peer, (training steps, head fine-tune steps, peers
#: that fell back to their local model, epsilon spent by peer)).
Stepped = tuple[
    int, int, int, dict[int, float], Contributions, tuple[int, int, int, dict[int, float]]
]


def _processes(peers: int) -> int:
    """One worker per CPU this process may use, from PARALLEL_FROM peers (else none)."""
    if peers < PARALLEL_FROM:
        return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def _epsilon(spent: Sequence[float]) -> dict[str, float]:
    if not spent or not any(spent):
        return {}
    return {"epsilon_spent_mean": float(np.mean(spent)), "epsilon_spent_max": float(max(spent))}


@dataclass(frozen=True)
class RoundRecord:
    """What a round did: averages refused, the peers' accuracies (peer -> accuracy, empty if
    not evaluated), rounds aborted and bytes sent (peer -> bytes) in it, and :data:`Stats`
    after it (cumulative)."""

    refused: int
    accuracies: Mapping[int, float]
    aborted: int
    sent: Mapping[int, int]
    stats: Stats


def _in_steps(
    pool: _Serial | _Routed, plan: Sequence[Sequence[Sequence[int]]], eval_every: int
) -> Iterator[RoundRecord]:
    """The rounds of ``plan`` (each round's groups) in three steps each: every peer trains,
    then every group runs its round, then every peer takes in its average (and is evaluated
    every ``eval_every`` rounds and after the last)."""
    finished: Finished = {}
    now_ms: float = START_MS
    for round_index, groups in enumerate(plan):
        refusals, _, contributions, _ = pool.learn(finished, evaluate=False, train=True)
        following = plan[round_index + 1] if round_index + 1 < len(plan) else []
        finished, aborted, sent, now_ms = pool.net(
            round_index, now_ms, groups, following, contributions
        )
        # Each peer takes in its round's average, then is evaluated (trained again at the
        # start of the next round).
        done = round_index + 1
        evaluate = done % eval_every == 0 or done == len(plan)
        applied, accuracies, _, stats = pool.learn(finished, evaluate=evaluate, train=False)
        finished = {}
        yield RoundRecord(refusals + applied, accuracies, aborted, sent, stats)


class _Part:
    """What one process holds: the learners of its peers (peer p in process p mod count),
    and the round machines of the groups it runs. Each group's round runs on a network of
    its own, seeded by (seed, round, group), from the same virtual time: groups never
    exchange a message, so the results do not depend on which process runs which group, nor
    on how many processes there are."""

    def __init__(
        self,
        learners: Mapping[int, Any],
        pristine: Callable[[int], Any],
        max_weight: int,
        seed: int,
    ) -> None:
        self.learners: dict[int, Any] = dict(learners)
        self.pristine = pristine  # peer -> its round machine as created
        self.nodes: dict[int, Any] = {}  # the round machines this process holds now
        self.max_weight = max_weight
        self.seed = seed

    def keep(self, index: int, count: int) -> None:
        self.learners = {p: v for p, v in self.learners.items() if p % count == index}

    def learn(self, finished: Finished, *, evaluate: bool, train: bool) -> Learned:
        """Take in the averages, evaluate (if asked), train the next contributions (if
        asked); with what this share did so far (:data:`Stats`)."""
        from gossiplearn.sim.steps import PhaseSteps

        steps = self.__dict__.setdefault("steps", PhaseSteps())
        refused = 0
        for peer, pairs in finished.items():
            for average, contribution in pairs:
                with steps.phase("head"):
                    applied = self.learners[peer].apply(average, contribution, evaluate=False)
                refused += not applied.accepted
        accuracies = (
            {p: accuracy_of(learner.evaluate()) for p, learner in self.learners.items()}
            if evaluate
            else {}
        )
        contributions: Contributions = {}
        if train:
            for peer, learner in self.learners.items():
                with steps.phase("train"):
                    vector = learner.train_round()
                weight = min(learner.trainer.num_train_samples, self.max_weight)
                contributions[peer] = (vector, weight, learner.model.schema_hash)
        fell_back, spent = self.finish()
        return refused, accuracies, contributions, (steps.train, steps.head, fell_back, spent)

    def step(
        self,
        round_index: int,
        items: Sequence[tuple[int, Sequence[tuple[np.ndarray, np.ndarray]]]],
        evaluate: bool,
        train: bool,
    ) -> Stepped:
        """Each peer of ``items`` ((peer, its averages of round ``round_index`` with its
        contributions)), one after the other: takes in its averages, is evaluated (if asked)
        and trains its next contribution (if asked); with what that did (:data:`Stepped`).
        A peer's learner is its own: what one peer does changes nothing of another's, so
        peers may be stepped in any order, in any process."""
        from gossiplearn.sim.steps import PhaseSteps

        steps = self.__dict__.setdefault("steps", PhaseSteps())
        head_before, train_before = steps.head, steps.train
        refused = fell_back = 0
        accuracies: dict[int, float] = {}
        spent: dict[int, float] = {}
        contributions: Contributions = {}
        for peer, pairs in items:
            learner = self.learners[peer]
            fell_before = learner.fell_back
            for average, contribution in pairs:
                with steps.phase("head"):
                    applied = learner.apply(average, contribution, evaluate=False)
                refused += not applied.accepted
            fell_back += learner.fell_back - fell_before
            if evaluate:
                accuracies[peer] = accuracy_of(learner.evaluate())
            privacy_spent = getattr(learner.trainer, "privacy_spent", None)
            if callable(privacy_spent):
                spent[peer] = float(privacy_spent()[0])
            if train:
                with steps.phase("train"):
                    vector = learner.train_round()
                weight = min(learner.trainer.num_train_samples, self.max_weight)
                contributions[peer] = (vector, weight, learner.model.schema_hash)
        head, trained = steps.head - head_before, steps.train - train_before
        return (
            round_index,
            len(items),
            refused,
            accuracies,
            contributions,
            (
                trained,
                head,
                fell_back,
                spent,
            ),
        )

    def net(
        self,
        round_index: int,
        start_ms: float,
        groups: Sequence[tuple[int, Sequence[int]]],
        adopt: Sequence[int],
        arriving: Mapping[int, bytes],
        contributions: Contributions,
        leaving: Sequence[int],
    ) -> tuple[NetResult, dict[int, bytes]]:
        """Run ``groups`` ((index, members)) of round ``round_index``, with the members'
        ``contributions``; round machines come from the pristine copies (``adopt``), from
        other processes (``arriving``, pickled) or are held here; ``leaving`` ones are
        handed back pickled, for the process that runs their next group."""
        import pickle

        from gossiplearn.protocol.events import RoundFinished, RoundUsageError
        from gossiplearn.sim.memnet import MemoryNetwork

        for peer in adopt:
            self.nodes[peer] = self.pristine(peer)
        for peer, blob in arriving.items():
            self.nodes[peer] = pickle.loads(blob)
        for peer, (vector, weight, schema_hash) in contributions.items():
            self.nodes[peer].set_contribution(vector, weight, schema_hash)
        finished: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        aborted = 0
        sent: dict[int, int] = {}
        end_ms = start_ms
        for group_index, group in groups:
            seed = (self.seed * 1_000_003 + round_index) * 1_000_003 + group_index
            net = MemoryNetwork(seed=seed, latency_ms=2.0, jitter_ms=2.0, start_ms=int(start_ms))
            members = [net.add(self.nodes[peer]) for peer in group]
            with contextlib.suppress(RoundUsageError):  # it backs off (almost) everyone asked
                net.start_round(members[0].public_key, [m.public_key for m in members[1:]])
            net.run()
            end_ms = max(end_ms, net.now_ms)
            for peer, node in zip(group, members, strict=True):
                for outcome in net.outcomes.get(node.public_key, ()):
                    if isinstance(outcome, RoundFinished):
                        finished.setdefault(peer, []).append(
                            (outcome.average, outcome.contribution)
                        )
                    else:
                        aborted += 1
                sent[peer] = net.bytes_sent[node.public_key]
        departing = {peer: pickle.dumps(self.nodes.pop(peer)) for peer in leaving}
        return (finished, aborted, sent, end_ms), departing

    def finish(self) -> tuple[int, list[float]]:
        """(peers that fell back to their local model, each trainer's epsilon spent)."""
        learners = self.learners.values()
        spent = [
            float(learner.trainer.privacy_spent()[0])
            for learner in learners
            if callable(getattr(learner.trainer, "privacy_spent", None))
        ]
        return sum(learner.fell_back for learner in learners), spent


class _Serial:
    """Every peer in this process."""

    def __init__(self, part: _Part) -> None:
        self.part = part

    def learn(self, finished: Finished, *, evaluate: bool, train: bool) -> Learned:
        return self.part.learn(finished, evaluate=evaluate, train=train)

    def net(
        self,
        round_index: int,
        start_ms: float,
        groups: Sequence[Sequence[int]],
        following: Sequence[Sequence[int]],
        contributions: Contributions,
    ) -> NetResult:
        adopt = [p for group in groups for p in group if p not in self.part.nodes]
        # Only the groups' members contribute (a peer that sits the round out may have no
        # round machine yet).
        shares = {p: contributions[p] for group in groups for p in group}
        result, _ = self.part.net(
            round_index, start_ms, list(enumerate(groups)), adopt, {}, shares, []
        )
        return result

    def finish(self) -> tuple[int, list[float]]:
        return self.part.finish()


class _Routed:
    """The peers over ``count`` workers (memory mode over Ray, :class:`_RayPool`): peer p
    learns in worker p mod count; group g of each round runs in worker g mod count, with its
    members' round machines (moved between workers, pickled, when their next group runs
    elsewhere: over Ray, for more peers than one machine holds). This process only routes:
    contributions to the groups, averages to the learners. A subclass says how a worker is
    asked (``_ask``: one (request, arguments) per worker, their answers)."""

    count: int
    home: dict[int, int]  # peer -> the worker holding its round machine
    in_transit: dict[int, bytes]  # pickled round machines between workers

    def _ask(self, messages: Sequence[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        raise NotImplementedError

    def __enter__(self) -> _Routed:
        return self

    def __exit__(self, failed: object, *_: object) -> None:
        pass

    def learn(self, finished: Finished, *, evaluate: bool, train: bool) -> Learned:
        answers = self._ask(
            [
                (
                    "learn",
                    ({p: v for p, v in finished.items() if p % self.count == w}, evaluate, train),
                )
                for w in range(self.count)
            ]
        )
        accuracies: dict[int, float] = {}
        contributions: Contributions = {}
        for _, part_accuracies, part_contributions, _ in answers:
            accuracies.update(part_accuracies)
            contributions.update(part_contributions)
        stats: Stats = (
            sum(a[3][0] for a in answers),
            sum(a[3][1] for a in answers),
            sum(a[3][2] for a in answers),
            [e for a in answers for e in a[3][3]],
        )
        return sum(a[0] for a in answers), accuracies, contributions, stats

    def net(
        self,
        round_index: int,
        start_ms: float,
        groups: Sequence[Sequence[int]],
        following: Sequence[Sequence[int]],
        contributions: Contributions,
    ) -> NetResult:
        next_at = {p: g % self.count for g, group in enumerate(following) for p in group}
        messages = []
        for w in range(self.count):
            mine = [(g, group) for g, group in enumerate(groups) if g % self.count == w]
            members = [p for _, group in mine for p in group]
            adopt = [p for p in members if p not in self.home and p not in self.in_transit]
            arriving = {p: self.in_transit.pop(p) for p in members if p in self.in_transit}
            for p in members:
                self.home[p] = w
            # Leaving after this round: machines held here whose next group runs elsewhere.
            leaving = [
                p for p, at in self.home.items() if at == w and p in next_at and next_at[p] != w
            ]
            for p in leaving:
                del self.home[p]
            shares = {p: contributions[p] for p in members if p in contributions}
            messages.append(
                ("net", (round_index, start_ms, mine, adopt, arriving, shares, leaving))
            )
        finished: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        aborted, sent, end_ms = 0, {}, start_ms
        for (part_finished, part_aborted, part_sent, part_end), departing in self._ask(messages):
            finished.update(part_finished)
            aborted += part_aborted
            sent.update(part_sent)
            end_ms = max(end_ms, part_end)
            self.in_transit.update(departing)
        return finished, aborted, sent, end_ms

    def finish(self) -> tuple[int, list[float]]:
        answers = self._ask([("finish", ())] * self.count)
        return sum(a[0] for a in answers), [e for a in answers for e in a[1]]


class _Forked:
    """Memory mode over forked worker processes: the peers' learners in ``count`` workers
    (peer p in worker p mod count, each worker with a copy of everything built so far),
    every round machine here, where every group's round runs. Round machines never move
    (pickling one costs more than its round once it remembers 16 rounds' statements), and
    the workers learn while this process runs the groups: as soon as a group's round is
    over, its members take in their averages, are evaluated and train their next
    contributions in their workers, and a group of the next round runs as soon as its
    members' contributions are back. The groups of a round run from the virtual time the
    last group of the round before ended, each on a network of its own, so the results are
    those of one process."""

    #: A worker is asked to step at most this many peers at once (smaller: the next
    #: round's groups wait less for their members; larger: fewer messages).
    BATCH = 32

    def __init__(self, part: _Part, count: int) -> None:
        import multiprocessing
        import queue
        import threading

        context = multiprocessing.get_context("fork")
        self.part = part
        self.peers = len(part.learners)
        self.count = count
        self.connections: list[Any] = []
        self.processes: list[Any] = []
        # Answers, read by one thread per worker: a worker that answers while this process
        # is sending it more work never waits on a full pipe for this process to read.
        self.answers: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        for index in range(count):
            here, there = context.Pipe()
            process = context.Process(target=_work, args=(there, part, index, count), daemon=True)
            process.start()
            there.close()
            self.connections.append(here)
            self.processes.append(process)
            threading.Thread(target=self._read, args=(here,), daemon=True).start()

    def _read(self, connection: Any) -> None:
        while True:
            try:
                self.answers.put(connection.recv())
            except (EOFError, OSError):
                # A worker that died (killed, out of memory) answers nothing more: whoever
                # waits for an answer learns it (after a normal stop nobody waits).
                self.answers.put(("error", RuntimeError("a memory-mode worker process ended")))
                return

    def __enter__(self) -> _Forked:
        return self

    def __exit__(self, failed: object, *_: object) -> None:
        for connection in self.connections:
            with contextlib.suppress(OSError):
                connection.send(("stop", ()))
        for process in self.processes:
            if failed is not None:  # Ctrl-C, SIGTERM, an error: no waiting for a busy worker
                process.kill()
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
        for connection in self.connections:
            connection.close()

    def rounds(
        self, plan: Sequence[Sequence[Sequence[int]]], eval_every: int
    ) -> Iterator[RoundRecord]:
        """Run ``plan`` (each round's groups); yield each round's record once every peer
        took in its average of that round (and was evaluated, if it was to be)."""
        peers = self.peers
        last = len(plan) - 1
        # peer -> (the round it is for, its contribution), as the workers send them back
        contributions: dict[int, tuple[int, tuple[np.ndarray, int, bytes]]] = {}
        waiting: list[list[tuple[int, Sequence[tuple[np.ndarray, np.ndarray]]]]] = [
            [] for _ in range(self.count)
        ]
        asked: list[tuple[int, bool, bool]] = [(-1, False, True)] * self.count
        tally = _Tally(len(plan))

        def ask(worker: int) -> None:
            items = waiting[worker]
            if items:
                round_index, evaluate, train = asked[worker]
                self.connections[worker].send(("step", (round_index, items, evaluate, train)))
                waiting[worker] = []

        def queue_step(
            round_index: int, peer: int, pairs: Sequence[tuple[np.ndarray, np.ndarray]]
        ) -> None:
            worker = peer % self.count
            done = round_index + 1
            how = (
                round_index,
                round_index >= 0 and (done % eval_every == 0 or round_index == last),
                round_index < last,
            )
            if asked[worker] != how:
                ask(worker)
                asked[worker] = how
            waiting[worker].append((peer, pairs))
            if len(waiting[worker]) >= self.BATCH:
                ask(worker)

        # The round whose groups run now: each group's members still training for it, and
        # the groups ready to run (all their members' contributions are here).
        current_round = -1
        missing: dict[int, int] = {}
        group_of: dict[int, int] = {}
        ready: list[int] = []

        def arrived(peer: int, round_index: int) -> None:
            if round_index == current_round and peer in group_of:
                g = group_of[peer]
                missing[g] -= 1
                if not missing[g]:
                    ready.append(g)

        def take_answer() -> None:
            kind, answer = self.answers.get()
            if kind == "error":
                raise answer
            round_index, stepped, refused, accuracies, trained, stats = answer
            for peer, contribution in trained.items():
                contributions[peer] = (round_index + 1, contribution)
                arrived(peer, round_index + 1)
            tally.stepped(round_index, stepped, refused, accuracies, stats)

        # The first contributions, in the order the first round's groups need them.
        first = plan[0] if plan else []
        order = [p for group in first for p in group]
        order += sorted(set(range(peers)) - set(order))
        for peer in order:
            queue_step(-1, peer, ())
        for worker in range(self.count):
            ask(worker)
        emitted = 0
        now_ms: float = START_MS
        for round_index, groups in enumerate(plan):
            end_ms = now_ms
            current_round = round_index
            group_of = {p: g for g, group in enumerate(groups) for p in group}
            missing = {g: len(group) for g, group in enumerate(groups)}
            ready = []
            for peer in group_of:
                if contributions.get(peer, (-1,))[0] == round_index:
                    arrived(peer, round_index)
            left = len(groups)
            while left:
                if not ready:
                    for worker in range(self.count):
                        ask(worker)  # what is waiting may be what the workers need to answer
                    take_answer()
                    continue
                running, ready = ready, []
                for g in running:
                    group = groups[g]
                    shares = {p: contributions.pop(p)[1] for p in group}
                    adopt = [p for p in group if p not in self.part.nodes]
                    (finished, aborted, sent, group_end), _ = self.part.net(
                        round_index, now_ms, [(g, group)], adopt, {}, shares, []
                    )
                    end_ms = max(end_ms, group_end)
                    tally.ran(round_index, aborted, sent)
                    for p in group:
                        queue_step(round_index, p, finished.get(p, ()))
                left -= len(running)
            for peer in range(peers):
                if peer not in group_of:  # sat this round out: evaluated and trained all the same
                    queue_step(round_index, peer, ())
            for worker in range(self.count):
                ask(worker)
            now_ms = end_ms
            while emitted < round_index + 1 and tally.complete(emitted, peers):
                yield tally.record(emitted, peers)
                emitted += 1
        while emitted < len(plan):
            if tally.complete(emitted, peers):
                yield tally.record(emitted, peers)
                emitted += 1
            else:
                take_answer()


class _Tally:
    """What :class:`_Forked` heard of each round so far, into :class:`RoundRecord` s."""

    def __init__(self, rounds: int) -> None:
        self.stepped_peers = [0] * rounds
        self.refused = [0] * rounds
        self.accuracies: list[dict[int, float]] = [{} for _ in range(rounds)]
        self.aborted = [0] * rounds
        self.sent: list[dict[int, int]] = [{} for _ in range(rounds)]
        # training steps for round r (taken after round r - 1), head steps of round r, peers
        # that fell back in round r, epsilon spent by peer after round r
        self.train = [0] * (rounds + 1)
        self.head = [0] * rounds
        self.fell_back = [0] * rounds
        self.spent: list[dict[int, float]] = [{} for _ in range(rounds)]

    def ran(self, round_index: int, aborted: int, sent: Mapping[int, int]) -> None:
        self.aborted[round_index] += aborted
        self.sent[round_index].update(sent)

    def stepped(
        self,
        round_index: int,
        peers: int,
        refused: int,
        accuracies: Mapping[int, float],
        stats: tuple[int, int, int, Mapping[int, float]],
    ) -> None:
        trained, head, fell_back, spent = stats
        self.train[round_index + 1] += trained
        if round_index < 0:
            return
        self.stepped_peers[round_index] += peers
        self.refused[round_index] += refused
        self.accuracies[round_index].update(accuracies)
        self.head[round_index] += head
        self.fell_back[round_index] += fell_back
        self.spent[round_index].update(spent)

    def complete(self, round_index: int, peers: int) -> bool:
        return self.stepped_peers[round_index] == peers

    def record(self, round_index: int, peers: int) -> RoundRecord:
        upto = round_index + 1
        spent = self.spent[round_index]
        stats: Stats = (
            sum(self.train[:upto]),
            sum(self.head[:upto]),
            sum(self.fell_back[:upto]),
            [spent[p] for p in sorted(spent)],
        )
        return RoundRecord(
            self.refused[round_index],
            self.accuracies[round_index],
            self.aborted[round_index],
            self.sent[round_index],
            stats,
        )


class _RayPool(_Routed):
    """:class:`_Routed` over Ray actors (one per CPU of the cluster, one CPU each), wherever
    Ray puts them: each builds its peers' learners from their data (shipped once) and the
    round machines it adopts, exactly as this process would. An actor lost with its node
    ends the run (its peers' models are gone): RuntimeError."""

    def __init__(self, config: SimConfig, shards: Sequence[PeerData], address: str) -> None:
        from gossiplearn.sim.ray_peers import connect, import_ray

        self.ray = import_ray()
        self.connected = connect(address)
        cpus = int(self.ray.cluster_resources().get("CPU", 1))
        self.count = max(1, min(cpus, len(shards) // 3))
        self.home = {}
        self.in_transit = {}
        actor = self.ray.remote(num_cpus=1, max_restarts=0)(_RayPart)
        self.actors = [
            actor.remote(
                config,
                {p: shards[p] for p in range(w, len(shards), self.count)},
            )
            for w in range(self.count)
        ]

    def __exit__(self, failed: object, *_: object) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        if self.connected:
            self.ray.shutdown()

    def _ask(self, messages: Sequence[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        refs = [
            getattr(actor, kind).remote(*payload)
            for actor, (kind, payload) in zip(self.actors, messages, strict=True)
        ]
        try:
            return list(self.ray.get(refs))
        except self.ray.exceptions.RayActorError as exc:
            raise RuntimeError(f"a memory-mode actor died (its Ray node?): {exc}") from None


class _RayPart:
    """A Ray actor holding one share of memory mode's peers (see :class:`_RayPool`)."""

    def __init__(self, config: SimConfig, shards: Mapping[int, PeerData]) -> None:
        import torch

        torch.set_num_threads(1)
        learners = build_learners(config, shards)
        self.part = _Part(
            learners, lambda peer: make_node(config, peer), config.max_weight, config.seed
        )

    def learn(self, finished: Finished, evaluate: bool, train: bool) -> Learned:
        return self.part.learn(finished, evaluate=evaluate, train=train)

    def net(self, *arguments: Any) -> tuple[NetResult, dict[int, bytes]]:
        return self.part.net(*arguments)

    def finish(self) -> tuple[int, list[float]]:
        return self.part.finish()


def _work(connection: Any, part: _Part, index: int, count: int) -> None:
    """A worker: serve learn / net / finish requests until told to stop."""
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    torch.set_num_threads(1)
    part.keep(index, count)
    while True:
        try:
            kind, payload = connection.recv()
        except EOFError:
            return
        if kind == "stop":
            return
        try:
            if kind == "step":
                answer: Any = part.step(*payload)
            elif kind == "learn":
                finished, evaluate, train = payload
                answer = part.learn(finished, evaluate=evaluate, train=train)
            elif kind == "net":
                answer = part.net(*payload)
            else:  # "finish"
                answer = part.finish()
            connection.send(("ok", answer))
        except Exception as exc:  # noqa: BLE001 - re-raised in the parent
            connection.send(("error", exc))


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
