"""One admitted member running its own code against round v2, on the in-memory network.

One test per attack class the red team reproduced against version 1 (``gossiplearn.testing.
insider`` implements each attack). Each runs twice: with every defence (the attack fails:
an abort, an equivocation proof, or no exact recovery) and with the one defence that stops it
switched off, where the same test must fail with :class:`AttackSucceeded` (a strict xfail):
so each defence is shown to be what stops its attack.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from gossiplearn.protocol.envelope import verify_envelope
from gossiplearn.protocol.events import (
    EquivocationDetected,
    RoundAborted,
    RoundFinished,
    RoundUsageError,
)
from gossiplearn.protocol.evidence import verify_proof
from gossiplearn.protocol.messages import Busy
from gossiplearn.protocol.node import Safeguards
from gossiplearn.sim.memnet import Outcome
from gossiplearn.testing.insider import (
    Holder,
    Insider,
    ReducerEquivocation,
    WeightEquivocation,
    WeightLever,
    Withhold,
    learned_sums,
    vector_error,
)
from gossiplearn.testing.swarm import SCHEMA_HASH, Swarm, build_swarm, check_round_invariant


class AttackSucceeded(AssertionError):
    """The attack achieved what its defence is there to prevent."""


def defence(name: str) -> list[Any]:
    """[with every defence, with the defence ``name`` switched off (must fail)]."""
    return [
        pytest.param(Safeguards(), id="defended"),
        pytest.param(
            replace(Safeguards(), **{name: False}),
            id=f"without_{name}",
            marks=pytest.mark.xfail(raises=AttackSucceeded, strict=True),
        ),
    ]


def honest_outcomes(swarm: Swarm, group: bytes, attacker: bytes) -> dict[bytes, Outcome]:
    return {
        key: o
        for key in swarm.keys
        if key != attacker
        for o in swarm.net.outcomes[key]
        if o.group == group
    }


def no_divergent_averages(outcomes: dict[bytes, Outcome]) -> list[RoundFinished]:
    """Honest members that finished all hold the same average, or the attack succeeded."""
    finished = [o for o in outcomes.values() if isinstance(o, RoundFinished)]
    if any(not np.array_equal(o.average, finished[0].average) for o in finished):
        raise AttackSucceeded("honest members applied different averages")
    return finished


def proofs_against(swarm: Swarm, attacker: bytes) -> list[EquivocationDetected]:
    """Equivocation proofs the honest members hold, each checked to convict ``attacker``."""
    found = []
    for key in swarm.keys:
        if key == attacker:
            continue
        for action in swarm.net.proofs[key]:
            assert action.peer == attacker
            assert verify_proof(action.proof)[0] == attacker
            found.append(action)
    return found


# ---- 1: weight equivocation ---------------------------------------------------------------------


@pytest.mark.parametrize("safeguards", defence("confirm"))
@pytest.mark.parametrize("k", [3, 4])
def test_weight_equivocation_is_proven_and_nothing_is_applied(
    k: int, safeguards: Safeguards
) -> None:
    # Sample weighting with a cap of 1000 and weights of 100: a shift of 500 keeps everyone's
    # total inside the cap's bounds, so only the agreement step can see it.
    swarm = build_swarm(k, k=k, max_weight=1000, safeguards=safeguards, insiders=[1])
    attacker, target = swarm.keys[1], swarm.keys[2]
    for peer in swarm.peers.values():
        peer.weight = 100
        peer.node.set_contribution(peer.vector, 100, SCHEMA_HASH)
    insider = swarm.peers[attacker].node
    assert isinstance(insider, Insider)
    insider.attack = WeightEquivocation(target=target, shift=500)
    rnd = swarm.start(swarm.keys[0])
    swarm.net.run()

    outcomes = honest_outcomes(swarm, rnd.group, attacker)
    assert len(outcomes) == k - 1
    no_divergent_averages(outcomes)
    # Every honest member aborted, and holds a proof: the attacker signed two different
    # WEIGHT_SHAREs for one group. From now on they refuse it.
    assert {getattr(o, "reason", "finished") for o in outcomes.values()} == {"equivocation"}
    assert all(o.blamed == (attacker,) for o in outcomes.values() if isinstance(o, RoundAborted))
    assert len(proofs_against(swarm, attacker)) == k - 1
    for key in outcomes:
        assert swarm.peers[key].node.backoff.blocked(attacker, int(swarm.net.now_ms)) == "refused"
    # Version 1's privacy loss cannot happen at all: nobody's PART depends on the total
    # weight, so what the attacker holds (the group's sum) is far from the target's vector.
    sums = learned_sums(insider, swarm.config.frac_bits)
    if rnd.group in sums:
        estimate = sums[rnd.group].values * k  # the sum, as if it were the target's alone
        assert vector_error(estimate, swarm.peers[target].vector) > 0.5


# ---- 2: abort differencing ---------------------------------------------------------------------

STEP_RMS = 0.01  # one local training step's change of a vector (RMS per element)


def train_if_spent(swarm: Swarm, key: bytes, rng: np.random.Generator) -> None:
    """The driver of a real peer: a new contribution only when the node needs one (its last
    one was spent), after a training step (a change of STEP_RMS per element)."""
    peer = swarm.peers[key]
    if peer.node.contribution_fresh:
        return
    step = rng.normal(0, STEP_RMS, peer.vector.size).astype(np.float32)
    peer.vector = peer.vector + step
    peer.node.set_contribution(peer.vector, peer.weight, SCHEMA_HASH)


@pytest.mark.parametrize("safeguards", defence("fresh_contributions"))
def test_abort_differencing_recovers_no_vector_exactly(safeguards: Safeguards) -> None:
    # M spoils three rounds, {M,A,B}, {M,A,C}, {M,B,C}: it withholds its own REDUCED part,
    # reads everyone else's and so holds each group's sum. With unchanged vectors,
    # S1 + S2 - S3 is 2 x_A plus M's own, known, vectors. Backoff is off: it would only slow
    # M down, and this shows M learns nothing exact even when it is never backed off.
    safeguards = replace(safeguards, backoff=False)
    swarm = build_swarm(4, k=3, max_weight=1, safeguards=safeguards, insiders=[0])
    attacker, a, b, c = swarm.keys
    insider = swarm.peers[attacker].node
    assert isinstance(insider, Insider)
    insider.attack = Withhold()
    rng = np.random.default_rng(5)
    own = []
    groups = []
    for others in ([a, b], [a, c], [b, c]):
        swarm.new_vector(attacker, rng)  # M brings a new vector each time; it knows them all
        own.append(swarm.peers[attacker].vector.copy())
        for key in (a, b, c):
            train_if_spent(swarm, key, rng)
        rnd = swarm.start(attacker, others)
        swarm.net.run()
        groups.append(rnd.group)
        outcomes = honest_outcomes(swarm, rnd.group, attacker)
        assert not any(isinstance(o, RoundFinished) for o in outcomes.values())
    truth = swarm.peers[a].vector  # its latest
    sums = learned_sums(insider, swarm.config.frac_bits)
    assert [g in sums for g in groups] == [True] * 3  # M learned each group's sum
    s1, s2, s3 = (sums[g].values * 3 for g in groups)  # equal weights: sum / 3 each
    estimate = (s1 + s2 - s3 - own[0] - own[1] + own[2]) / 2
    error = vector_error(estimate, truth)
    # Without the defence, x_A comes out to the encoding's precision (~1e-6). With it, each
    # victim trained before its next round: the estimate is off by about one step or more.
    if error < STEP_RMS:
        raise AttackSucceeded(f"x_A recovered to RMS {error:.2e}")


def test_a_spent_contribution_is_declined_until_it_changes() -> None:
    swarm = build_swarm(3, k=3, max_weight=1, record=True)
    a, b, c = swarm.keys
    first = swarm.start(a)
    swarm.net.run()
    assert [type(o) for o in honest_outcomes(swarm, first.group, b"").values()] == [
        RoundFinished
    ] * 3
    node = swarm.peers[b].node
    assert not node.contribution_fresh
    node.set_contribution(swarm.peers[b].vector, 1, SCHEMA_HASH)  # the same vector again
    assert not node.contribution_fresh
    for key in (a, c):
        swarm.peers[key].node.set_contribution(swarm.peers[key].vector + 1e-3, 1, SCHEMA_HASH)
    since = len(swarm.net.deliveries)
    second = swarm.start(a)
    swarm.net.run()
    answers = [
        verify_envelope(d.frame).body
        for d in swarm.net.deliveries[since:]
        if d.sender == b and d.kind == "BUSY"
    ]
    assert answers == [Busy("contribution_spent")]
    assert swarm.net.outcomes[a][-1].group == second.group
    assert swarm.net.outcomes[a][-1].reason == "too_few_accepted"  # type: ignore[union-attr]
    # One training step later, b joins again.
    node.set_contribution(swarm.peers[b].vector + 1e-3, 1, SCHEMA_HASH)
    assert node.contribution_fresh
    third = swarm.start(c)
    swarm.net.run()
    assert [type(o) for o in honest_outcomes(swarm, third.group, b"").values()] == [
        RoundFinished
    ] * 3


# ---- 3: the weight lever ----------------------------------------------------------------------


@pytest.mark.parametrize("safeguards", defence("weight_bounds"))
def test_the_weight_lever_aborts_the_round(safeguards: Safeguards) -> None:
    # Equal weights (the default cap of 1): M brings an all-zero backbone and declares a
    # weight of 2^40. Without the bounds, every honest member's average is scaled by
    # m / (m + 2^40): the backbones everyone applies are wiped.
    swarm = build_swarm(4, max_weight=1, safeguards=safeguards, insiders=[3], jitter_ms=0)
    attacker = swarm.keys[3]
    zero = np.zeros_like(swarm.peers[attacker].vector)
    swarm.peers[attacker].vector = zero
    insider = swarm.peers[attacker].node
    assert isinstance(insider, Insider)
    insider.attack = WeightLever()
    insider.set_contribution(zero, 1 << 40, SCHEMA_HASH)
    rnd = swarm.start(swarm.keys[0])
    swarm.net.run()

    outcomes = honest_outcomes(swarm, rnd.group, attacker)
    expected = sum(p.vector.astype(np.float64) for p in swarm.peers.values()) / 4
    for finished in no_divergent_averages(outcomes):
        if vector_error(finished.average, expected) > 1e-3:
            raise AttackSucceeded(
                f"the average applied is off by RMS {vector_error(finished.average, expected)}"
            )
    assert {getattr(o, "reason", "finished") for o in outcomes.values()} == {"bad_total_weight"}


# ---- 4: holding the network --------------------------------------------------------------------

HOLD_WINDOW_MS = 60_000


def honest_rounds_per_minute(safeguards: Safeguards, *, holder: bool, seed: int = 0) -> int:
    """Rounds finished among the 3 honest peers of a 4-peer network in one minute of virtual
    time, each honest peer inviting every ~1 s when idle and training between rounds; peer 0
    holds (invites, sends the ROSTER, falls silent) whenever it can, if ``holder``."""
    swarm = build_swarm(4, k=4, max_weight=1, safeguards=safeguards, insiders=[0], seed=seed)
    attacker, *honest = swarm.keys
    if holder:
        insider = swarm.peers[attacker].node
        assert isinstance(insider, Insider)
        insider.attack = Holder()
    rng = np.random.default_rng(seed)
    timing = random.Random(seed)
    start = swarm.net.now_ms
    next_invite = {key: start + timing.uniform(0, 1000) for key in swarm.keys}
    finished: set[bytes] = set()
    now = start
    while now < start + HOLD_WINDOW_MS:
        now += 50
        swarm.net.run(until_ms=now)
        for key in swarm.keys:
            node = swarm.peers[key].node
            if key == attacker and not holder:
                continue  # without a holder, peer 0 stays out: 3 honest peers alone
            if node.busy:
                continue
            if key == attacker:
                swarm.new_vector(key, rng)  # the holder always has something to bring
            else:
                train_if_spent(swarm, key, rng)
            if key == attacker or now >= next_invite[key]:
                next_invite[key] = now + timing.uniform(500, 1500)
                candidates = [k for k in swarm.keys if k != key and (holder or k != attacker)]
                with contextlib.suppress(RoundUsageError):  # too few not backed off: later
                    swarm.start(key, candidates)
        for key in honest:
            for outcome in swarm.net.outcomes[key]:
                if isinstance(outcome, RoundFinished) and attacker not in outcome.members:
                    finished.add(outcome.group)
            swarm.net.outcomes[key].clear()
    return len(finished)


@pytest.mark.parametrize(
    "safeguards",
    [
        pytest.param(Safeguards(), id="defended"),
        pytest.param(
            Safeguards(backoff=False, scaled_deadlines=False),
            id="without_backoff_and_scaled_deadlines",
            marks=pytest.mark.xfail(raises=AttackSucceeded, strict=True),
        ),
    ],
)
def test_a_holder_cannot_stop_the_network(safeguards: Safeguards) -> None:
    baseline = honest_rounds_per_minute(safeguards, holder=False)
    held = honest_rounds_per_minute(safeguards, holder=True)
    assert baseline > 30  # the 3 honest peers alone
    if held < baseline / 4:
        raise AttackSucceeded(f"{held} honest rounds in a minute against {baseline} without it")


# ---- 5: reducer equivocation -------------------------------------------------------------------


@pytest.mark.parametrize("safeguards", defence("confirm"))
def test_reducer_equivocation_is_proven(safeguards: Safeguards) -> None:
    # M signs a different reduced part (and its digest) for one victim than for the others:
    # the victim's average would differ. The victims' CONFIRM evidence conflicts: a proof.
    swarm = build_swarm(4, safeguards=safeguards, insiders=[2])
    attacker, victim = swarm.keys[2], swarm.keys[1]
    insider = swarm.peers[attacker].node
    assert isinstance(insider, Insider)
    insider.attack = ReducerEquivocation(victim=victim)
    rnd = swarm.start(swarm.keys[0])
    swarm.net.run()

    outcomes = honest_outcomes(swarm, rnd.group, attacker)
    no_divergent_averages(outcomes)
    assert insider.attack.altered == [rnd.group]
    assert {getattr(o, "reason", "finished") for o in outcomes.values()} == {"equivocation"}
    assert len(proofs_against(swarm, attacker)) == 3


def test_a_reduced_part_that_does_not_match_its_digest_aborts() -> None:
    # The same, but M keeps the true part digest in the altered shards: the victim finds the
    # data does not match what M signed, blames M, and nobody applies anything.
    swarm = build_swarm(4, insiders=[2])
    attacker, victim = swarm.keys[2], swarm.keys[1]
    insider = swarm.peers[attacker].node
    assert isinstance(insider, Insider)
    insider.attack = ReducerEquivocation(victim=victim, same_digest=True)
    rnd = swarm.start(swarm.keys[0])
    swarm.net.run()

    check_round_invariant(swarm, rnd, malicious=[attacker])
    outcomes = honest_outcomes(swarm, rnd.group, attacker)
    assert not any(isinstance(o, RoundFinished) for o in outcomes.values())
    victim_outcome = outcomes[victim]
    assert isinstance(victim_outcome, RoundAborted)
    assert victim_outcome.reason == "bad_reduced_digest"
    assert victim_outcome.blamed == (attacker,)
