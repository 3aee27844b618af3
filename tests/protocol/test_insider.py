"""One admitted member running its own code against round v3, on the in-memory network.

One test per attack class the red teams reproduced (``gossiplearn.testing.insider``
implements each). Each runs twice: with every defence (the attack fails: an abort, a proof
against the insider, no exact recovery, the insider singled out) and with the defence that
stops it switched off, where the same test must fail with :class:`AttackSucceeded` (a strict
xfail): so each defence is shown to be what stops its attack. The chaos insider
(test_chaos_insider.py) searches beyond these classes.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from gossiplearn.crypto.masks import prg
from gossiplearn.crypto.ring import RING32, decode
from gossiplearn.protocol.aggregation import part_bounds
from gossiplearn.protocol.envelope import verify_envelope
from gossiplearn.protocol.events import (
    EquivocationDetected,
    RoundAborted,
    RoundCancelled,
    RoundFinished,
    RoundUsageError,
)
from gossiplearn.protocol.evidence import verify_proof
from gossiplearn.protocol.messages import MAX_WEIGHT, Busy, Part
from gossiplearn.protocol.safeguards import Safeguards
from gossiplearn.protocol.shards import MAX_SHARD_BYTES
from gossiplearn.sim.memnet import Outcome
from gossiplearn.testing.insider import (
    ConfirmSplit,
    Framer,
    FramerNode,
    Holder,
    Insider,
    ReducerEquivocation,
    RosterReorder,
    Spoiler,
    WeightLever,
    Withhold,
    learned_sums,
    vector_error,
)
from gossiplearn.testing.swarm import SCHEMA_HASH, Swarm, build_swarm, check_round_invariant


class AttackSucceeded(AssertionError):
    """The attack achieved what its defence is there to prevent."""


def defence(*names: str) -> list[Any]:
    """[with every defence, with the defences ``names`` switched off (must fail)]."""
    return [
        pytest.param(Safeguards(), id="defended"),
        pytest.param(
            replace(Safeguards(), **dict.fromkeys(names, False)),
            id="without_" + "_and_".join(names),
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
    """Equivocation proofs the honest members hold; any against someone else than
    ``attacker`` means an honest member was framed."""
    found = []
    for key in swarm.keys:
        if key == attacker:
            continue
        for action in swarm.net.proofs[key]:
            if action.peer != attacker:
                raise AttackSucceeded("an honest member holds a proof against an honest member")
            assert verify_proof(action.proof).peer == attacker
            found.append(action)
    return found


def insider_of(swarm: Swarm, key: bytes) -> Insider:
    node = swarm.peers[key].node
    assert isinstance(node, Insider)
    return node


# ---- 1: framing an honest member with a statement of an earlier round -------------------------


@pytest.mark.parametrize("safeguards", defence("transcript_binding"))
def test_an_honest_member_cannot_be_framed_with_its_statements_of_an_earlier_round(
    safeguards: Safeguards,
) -> None:
    # M runs a round with the victim V, lets it finish, waits until the others forgot the
    # group id (here after 2 ended groups; 1,024 by default, which the red team spent 73 s of
    # INVITE + CANCEL to pass), then initiates again with the same group id. In the second
    # round it relays V's REDUCED of the first round as CONFIRM evidence and sends ABORTs
    # carrying V's two statements as a "proof". In round v2 a slot named only the group id:
    # the proof was valid, everyone kept it, and V was refused by all, for good.
    swarm = build_swarm(
        4,
        k=4,
        max_weight=1,
        safeguards=safeguards,
        insiders=[0],
        insider_class=FramerNode,
        remembered_groups=2,
        jitter_ms=0,
    )
    attacker, victim, a, b = swarm.keys
    insider = insider_of(swarm, attacker)
    attack = Framer(victim=victim)
    insider.attack = attack
    rng = np.random.default_rng(1)
    first = swarm.start(attacker)
    swarm.net.run()
    assert all(
        isinstance(o, RoundFinished) for o in honest_outcomes(swarm, first.group, attacker).values()
    )
    for _ in range(3):  # honest rounds until the group id is forgotten
        for key in swarm.keys:
            swarm.new_vector(key, rng)
        swarm.start(a, [victim, b])
        swarm.net.run()
    for key in swarm.keys:
        swarm.new_vector(key, rng)
    second = swarm.start(attacker)
    assert second.group == first.group  # the id came back
    swarm.net.run()

    proofs_against(swarm, attacker)  # raises if anyone holds a proof against V
    now = int(swarm.net.now_ms)
    for key in (a, b):
        if swarm.peers[key].node.backoff.blocked(victim, now) == "refused":
            raise AttackSucceeded("an honest member refuses the victim")
    # And the frame-up itself is the insider's fault: its evidence proves nothing, and every
    # ABORT it sent carried a proof that does not verify.
    refused = sum(swarm.net.refused[key]["bad_proof"] for key in (victim, a, b))
    assert refused >= 1
    outcomes = honest_outcomes(swarm, second.group, attacker)
    assert {type(o) for o in outcomes.values()} <= {RoundFinished, RoundAborted}


# ---- 2: roster-order equivocation --------------------------------------------------------------


def combinations_the_insider_reads(
    swarm: Swarm, attacker: bytes, group: bytes
) -> dict[tuple[int, ...], np.ndarray]:
    """What M computes from the PARTs it received for its own part, as round v2's attack
    did: every sum of +-1 times each PART, with M's own mask with each sender removed (either
    sign, since M does not know which the victims used), decoded; keyed by the PART signs.
    Empty if it got fewer than two PARTs."""
    insider = insider_of(swarm, attacker)
    parts: dict[bytes, dict[int, Any]] = {}
    for envelope in insider.received:
        if envelope.group == group and isinstance(envelope.body, Part):
            parts.setdefault(envelope.sender, {})[envelope.body.shard.index] = envelope.body.shard
    if len(parts) < 2:
        return {}
    aggregation = insider._recent[group]  # noqa: SLF001 - the insider's own round state
    length = aggregation.group.params.length
    start, end = part_bounds(length, len(aggregation.members))[aggregation.index]
    senders = sorted(parts)
    rows = []
    for sender in senders:
        shards = parts[sender]
        data = np.concatenate([shards[i].array() for i in sorted(shards)]).astype(np.int64)
        j = aggregation.members.index(sender)
        seed = aggregation._mask_seeds[aggregation._rank[j]]  # noqa: SLF001
        rows.append((data, prg(seed, length)[start:end].astype(np.int64)))
    found = {}
    for signs in itertools.product((1, -1), repeat=len(senders)):
        for mask_signs in itertools.product((1, -1), repeat=len(senders)):
            total = sum(
                c * (d + s * m) for c, s, (d, m) in zip(signs, mask_signs, rows, strict=True)
            )
            values = decode(
                (total % (1 << 32)).astype(np.uint32), swarm.config.frac_bits, RING32, np.float64
            )
            found[(*signs, *mask_signs)] = values
    return found


def leak(swarm: Swarm, attacker: bytes, group: bytes, k: int) -> str | None:
    """A +-1 combination of the honest members' vectors other than their whole sum (which the
    average reveals anyway) that M read exactly, if any."""
    honest = [key for key in swarm.keys if key != attacker]
    start, end = part_bounds(swarm.peers[attacker].vector.size, k)[0]
    vectors = [swarm.peers[h].vector[start:end].astype(np.float64) / k for h in honest]
    reads = combinations_the_insider_reads(swarm, attacker, group)
    for coefficients in itertools.product((1, 0, -1), repeat=len(honest)):
        if all(c == 0 for c in coefficients) or len(set(coefficients)) == 1:
            continue  # nothing, or +-(the whole honest sum)
        truth = sum(c * v for c, v in zip(coefficients, vectors, strict=True))
        for read in reads.values():
            if np.max(np.abs(read - truth)) < 1e-4:
                return f"M read {coefficients} . (x_A, x_B, ...) exactly"
    return None


@pytest.mark.parametrize("safeguards", defence("roster_agreement", "transcript_binding"))
@pytest.mark.parametrize("k", [3, 4])
def test_a_reordered_roster_reveals_no_difference_and_convicts_the_initiator(
    k: int, safeguards: Safeguards
) -> None:
    # M (initiator, reducer of part 0) sends one member the roster in another order. In round
    # v2 mask signs followed each member's own roster index: two members' masks then added up
    # instead of cancelling, and M read x_A - x_B exactly (k = 3; with k = 4, another
    # combination than the group's sum).
    swarm = build_swarm(k, k=k, max_weight=1, safeguards=safeguards, insiders=[0], jitter_ms=0)
    attacker, *honest = swarm.keys
    insider = insider_of(swarm, attacker)
    insider.attack = RosterReorder(target=honest[-1])
    rnd = swarm.start(attacker)
    swarm.net.run()

    found = leak(swarm, attacker, rnd.group, k)
    if found:
        raise AttackSucceeded(found)
    # With the agreement, nobody sent a PART: the READYs disagreed first, and the relayed
    # ROSTER proves M signed two.
    assert combinations_the_insider_reads(swarm, attacker, rnd.group) == {}
    outcomes = honest_outcomes(swarm, rnd.group, attacker)
    assert {getattr(o, "reason", "finished") for o in outcomes.values()} == {"equivocation"}
    assert len(proofs_against(swarm, attacker)) == k - 1
    assert {o.blamed for o in outcomes.values() if isinstance(o, RoundAborted)} == {(attacker,)}


def test_masks_bound_to_the_transcript_hide_the_difference_even_without_the_agreement() -> None:
    # Defence in depth: with READY off, the PARTs go out, but pair seeds follow the transcript
    # (A's and B's differ) and signs the key order: P_A - P_B is uniformly random to M.
    k = 3
    swarm = build_swarm(
        k, k=k, max_weight=1, safeguards=Safeguards(roster_agreement=False), insiders=[0]
    )
    attacker, a, b = swarm.keys
    insider_of(swarm, attacker).attack = RosterReorder(target=b)
    rnd = swarm.start(attacker)
    swarm.net.run()
    assert len(combinations_the_insider_reads(swarm, attacker, rnd.group)) == 16
    assert leak(swarm, attacker, rnd.group, k) is None


# ---- 3: spoiling rounds nobody can be blamed for -----------------------------------------------


def spoil(swarm: Swarm, attacker: bytes, rounds: int, rng: np.random.Generator) -> None:
    """Honest members take turns inviting everyone; M spoils every round it is in."""
    honest = [k for k in swarm.keys if k != attacker]
    for i in range(rounds):
        for key in swarm.keys:
            if not swarm.peers[key].node.contribution_fresh:
                swarm.new_vector(key, rng)
        with contextlib.suppress(RoundUsageError):
            swarm.start(honest[i % len(honest)])
        swarm.net.run()


@pytest.mark.parametrize(
    ("when", "safeguards"),
    [
        pytest.param("ready", Safeguards(), id="abort-defended"),
        *[
            pytest.param("parts", p.values[0], id=f"garbage-{p.id}", marks=p.marks)
            for p in defence("group_testing")
        ],
    ],
)
def test_spoiled_rounds_single_out_the_spoiler_and_strike_no_honest_member(
    when: str, safeguards: Safeguards
) -> None:
    # M sends garbage PARTs (the average is implausible: the masks hide who sent it), or
    # aborts every round right after the roster. Round v2 blamed nobody for the garbage and
    # struck the honest member whose ABORT arrived first: 139 spoiled rounds in 60 s, blocked
    # peers empty everywhere, honest members backing each other off.
    # Jitter of 10 ms lets an honest member's ABORT overtake the last reduced shards of
    # another (with the round streamed, members otherwise find the average implausible
    # within the same few milliseconds, before any ABORT arrives).
    swarm = build_swarm(5, k=4, max_weight=1, safeguards=safeguards, insiders=[0], jitter_ms=10)
    attacker, *honest = swarm.keys
    insider_of(swarm, attacker).attack = Spoiler(when=when)
    spoil(swarm, attacker, 12, np.random.default_rng(3))

    for key in honest:
        for outcome in swarm.net.outcomes[key]:
            if isinstance(outcome, RoundAborted) and set(outcome.blamed) & set(honest):
                raise AttackSucceeded(f"an honest member struck an honest one ({outcome.reason})")
    # Every honest member that shared two failures with M singled it out, and nobody else.
    singled = {s.peers for key in honest for s in swarm.net.suspected[key]}
    blamed = {
        b for key in honest for o in swarm.net.outcomes[key] for b in getattr(o, "blamed", ())
    }
    if attacker not in blamed and not singled:
        raise AttackSucceeded("12 rounds spoiled, and the spoiler was never singled out")
    assert singled == {(attacker,)}
    assert sum(len(swarm.net.suspected[key]) for key in honest) >= 3
    # ... and the rounds without M go on.
    finished = {
        o.group for key in honest for o in swarm.net.outcomes[key] if isinstance(o, RoundFinished)
    }
    assert finished


# ---- 4: holding the network --------------------------------------------------------------------

HOLD_WINDOW_MS = 60_000
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


def honest_rounds_per_minute(safeguards: Safeguards, *, holder: bool, seed: int = 0) -> int:
    """Rounds finished among the 3 honest peers of a 4-peer network in one minute of virtual
    time, each honest peer inviting every ~1 s when idle and training between rounds; peer 0
    holds (invites, sends the ROSTER, falls silent) whenever it can, if ``holder``."""
    swarm = build_swarm(4, k=4, max_weight=1, safeguards=safeguards, insiders=[0], seed=seed)
    attacker, *honest = swarm.keys
    if holder:
        insider_of(swarm, attacker).attack = Holder()
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


#: One shard per part, and several (the round streams them; jitter reorders them).
SHARD_SIZES = [MAX_SHARD_BYTES, 64]


@pytest.mark.parametrize("shard_bytes", SHARD_SIZES)
@pytest.mark.parametrize("safeguards", defence("confirm"))
def test_reducer_equivocation_is_proven(safeguards: Safeguards, shard_bytes: int) -> None:
    # M signs a different reduced part (and its digest) for one victim than for the others:
    # the victim's average would differ. The victims' CONFIRM evidence conflicts: a proof.
    swarm = build_swarm(4, safeguards=safeguards, insiders=[2], shard_bytes=shard_bytes)
    attacker, victim = swarm.keys[2], swarm.keys[1]
    insider = insider_of(swarm, attacker)
    insider.attack = ReducerEquivocation(victim=victim)
    rnd = swarm.start(swarm.keys[0])
    swarm.net.run()

    outcomes = honest_outcomes(swarm, rnd.group, attacker)
    no_divergent_averages(outcomes)
    assert insider.attack.altered == [rnd.group]
    assert {getattr(o, "reason", "finished") for o in outcomes.values()} == {"equivocation"}
    assert len(proofs_against(swarm, attacker)) == 3


@pytest.mark.parametrize("shard_bytes", SHARD_SIZES)
def test_a_reduced_part_that_does_not_match_its_digest_aborts(shard_bytes: int) -> None:
    # The same, but M keeps the true part digest in the altered shards: the victim finds the
    # data does not match what M signed, blames M, and nobody applies anything.
    swarm = build_swarm(4, insiders=[2], shard_bytes=shard_bytes)
    attacker, victim = swarm.keys[2], swarm.keys[1]
    insider = insider_of(swarm, attacker)
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


# ---- 6: a split after agreement -----------------------------------------------------------------


@pytest.mark.parametrize("safeguards", defence("relay_evidence"))
def test_a_split_after_agreement_is_proven_by_the_members_that_finished(
    safeguards: Safeguards,
) -> None:
    # M sends one victim a wrong CONFIRM digest: the victim aborts, the others finish with
    # the victim's contribution inside. The victim relays M's CONFIRM in its ABORT; each
    # member that finished holds M's true CONFIRM: together, a proof.
    swarm = build_swarm(4, max_weight=1, safeguards=safeguards, insiders=[3], jitter_ms=0)
    attacker = swarm.keys[3]
    victim = swarm.keys[1]
    insider_of(swarm, attacker).attack = ConfirmSplit(victim=victim)
    rnd = swarm.start(swarm.keys[0])
    swarm.net.run()

    outcomes = honest_outcomes(swarm, rnd.group, attacker)
    victim_outcome = outcomes.pop(victim)
    assert isinstance(victim_outcome, RoundAborted)
    assert victim_outcome.reason == "disagreement" and victim_outcome.blamed == (attacker,)
    assert all(isinstance(o, RoundFinished) for o in outcomes.values())  # what a split costs
    convicted_by = {p.peer for key in outcomes for p in swarm.net.proofs[key]}
    if convicted_by != {attacker}:
        raise AttackSucceeded("the members that finished hold no proof of the split")
    for key in outcomes:
        assert swarm.peers[key].node.backoff.blocked(attacker, 0) == "refused"


# ---- 7: weights above the cap ---------------------------------------------------------------------


@pytest.mark.parametrize("safeguards", defence("weight_bounds"))
@pytest.mark.parametrize("declared", [1001, MAX_WEIGHT])
def test_a_declared_weight_above_the_cap_is_always_refused(
    declared: int, safeguards: Safeguards
) -> None:
    # Weighting opted in with a cap of 1000; honest weights of 100. Round v2 only bounded the
    # total: a weight of 1500 passed while the others left room under the cap. Now weights
    # are declared in the signed ACCEPT, visible to every member, and each one is checked.
    swarm = build_swarm(4, max_weight=1000, safeguards=safeguards, insiders=[3], jitter_ms=0)
    attacker = swarm.keys[3]
    for peer in swarm.peers.values():
        peer.weight = 100
        peer.node.set_contribution(peer.vector, 100, SCHEMA_HASH)
    insider = insider_of(swarm, attacker)
    insider.attack = WeightLever()
    insider.set_contribution(swarm.peers[attacker].vector, declared, SCHEMA_HASH)
    initiator = swarm.keys[0]
    rnd = swarm.start(initiator)
    swarm.net.run(until_ms=swarm.net.now_ms + 1_000)  # the round is over; backoffs last 5 s

    outcomes = honest_outcomes(swarm, rnd.group, attacker)
    for finished in no_divergent_averages(outcomes):
        if attacker in finished.members:
            raise AttackSucceeded(f"an average with a weight of {declared} (cap 1000) applied")
    assert swarm.peers[initiator].node.backoff.blocked(attacker, int(swarm.net.now_ms)) == "backoff"
    assert len(outcomes) == 3
    assert all(isinstance(o, RoundFinished) for o in outcomes.values())  # without M


def test_weights_are_visible_to_the_members_and_the_average_uses_them() -> None:
    # What weighting costs in privacy, stated in SECURITY.md: every member reads every other
    # member's declared weight in the ROSTER (min(samples, cap)).
    swarm = build_swarm(3, k=3, max_weight=50, jitter_ms=0, record=True)
    weights = {key: 10 * (i + 1) for i, key in enumerate(swarm.keys)}
    for key, peer in swarm.peers.items():
        peer.weight = weights[key]
        peer.node.set_contribution(peer.vector, peer.weight, SCHEMA_HASH)
    rnd = swarm.start(swarm.keys[0])
    swarm.net.run()
    outcomes = check_round_invariant(swarm, rnd)
    assert {o.total_weight for o in outcomes.values()} == {60}  # type: ignore[union-attr]
    rosters = [verify_envelope(d.frame).body for d in swarm.net.deliveries if d.kind == "ROSTER"]
    declared = {
        verify_envelope(frame).sender: verify_envelope(frame).body.weight  # type: ignore[attr-defined]
        for roster in rosters
        for frame in roster.accepts  # type: ignore[attr-defined]
    }
    assert declared == weights


# ---- abort differencing --------------------------------------------------------------------------


@pytest.mark.parametrize("safeguards", defence("fresh_contributions"))
def test_abort_differencing_recovers_no_vector_exactly(safeguards: Safeguards) -> None:
    # M spoils three rounds, {M,A,B}, {M,A,C}, {M,B,C}: it withholds its own REDUCED part,
    # reads everyone else's and so holds each group's sum. With unchanged vectors,
    # S1 + S2 - S3 is 2 x_A plus M's own, known, vectors. Backoff is off: it would only slow
    # M down, and this shows M learns nothing exact even when it is never backed off.
    safeguards = replace(safeguards, backoff=False)
    swarm = build_swarm(4, k=3, max_weight=1, safeguards=safeguards, insiders=[0])
    attacker, a, b, c = swarm.keys
    insider = insider_of(swarm, attacker)
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
    last = swarm.net.outcomes[a][-1]
    assert last.group == second.group
    assert isinstance(last, RoundCancelled) and last.reason == "too_few_accepted"
    # One training step later, b joins again.
    node.set_contribution(swarm.peers[b].vector + 1e-3, 1, SCHEMA_HASH)
    assert node.contribution_fresh
    third = swarm.start(c)
    swarm.net.run()
    assert [type(o) for o in honest_outcomes(swarm, third.group, b"").values()] == [
        RoundFinished
    ] * 3


def test_the_mask_the_insider_shares_is_all_it_can_remove() -> None:
    # Sanity of the reading above: with every defence, a PART M receives, less M's own mask
    # with its sender (either sign), does not correlate with the sender's vector.
    swarm = build_swarm(3, k=3, max_weight=1, insiders=[0], jitter_ms=0)
    attacker, a, _ = swarm.keys
    insider = insider_of(swarm, attacker)
    rnd = swarm.start(attacker)
    swarm.net.run()
    aggregation = swarm.peers[a].node._recent[rnd.group]  # noqa: SLF001
    mine = insider.received
    length = swarm.peers[a].vector.size
    start, end = part_bounds(length, 3)[0]
    (shards,) = [
        [e.body.shard for e in mine if e.sender == a and e.type == "PART" and e.group == rnd.group]
    ]
    data = np.concatenate([s.array() for s in sorted(shards, key=lambda s: s.index)])
    seed = aggregation._mask_seeds[aggregation._rank[0]]  # noqa: SLF001 - A's seed with M
    mask = prg(seed, length)[start:end]
    for candidate in (data - mask, data + mask):
        values = decode(candidate, swarm.config.frac_bits, RING32, np.float64)
        assert abs(np.corrcoef(values, swarm.peers[a].vector[start:end])[0, 1]) < 0.2
