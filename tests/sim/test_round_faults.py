"""Fault injection for the secure averaging round, on the deterministic in-memory network.

Every scenario builds a small swarm of :class:`Node` machines on a :class:`MemoryNetwork`
(``gossiplearn.testing.swarm``), injects one fault (a crash, a dropped, duplicated or tampered
frame, a forged roster, a replay) and then checks the round invariant with
:func:`check_round_invariant`:

* every honest member that finished holds the bit-identical average, equal (within
  k * 2^-frac_bits) to the weighted average of the finishing group's contributions;
* every other honest member ended with RoundAborted/RoundCancelled no later than the round's
  deadline (the INVITE's start + round_timeout_ms);
* once the network has drained, no honest node holds group state.

A last pair of tests re-derives every member's pairwise masks from the recorded ephemeral keys
and shows that what went on the wire was masked, in a finished and in an aborted round.

Seeds are fixed and time is virtual, so each scenario replays exactly.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from gossiplearn.crypto import (
    EphemeralKey,
    Identity,
    derive_pair_seed,
    encode,
    prg,
    shared_secret,
)
from gossiplearn.protocol import (
    Abort,
    Accept,
    Busy,
    Cancel,
    Confirm,
    Envelope,
    Invite,
    Message,
    Part,
    Reduced,
    Roster,
    Shard,
    WeightShare,
    split_shards,
    verify_envelope,
)
from gossiplearn.protocol.aggregation import part_bounds, part_digest
from gossiplearn.protocol.events import (
    Action,
    MessageRefused,
    RoundAborted,
    RoundCancelled,
    RoundFinished,
    Send,
)
from gossiplearn.protocol.node import Safeguards
from gossiplearn.protocol.shards import shard_digest
from gossiplearn.sim.memnet import Outcome
from gossiplearn.testing.swarm import (
    SCHEMA_HASH,
    VECTOR_LENGTH,
    Swarm,
    build_swarm,
    check_round_invariant,
    die_at_first,
    drop_frames,
    outcomes_of,
    reasons,
    resign,
)

# ---- 1-4: members that fall silent ----------------------------------------------------------


@pytest.mark.parametrize("silence", ["killed_at_start", "accept_dropped"])
@pytest.mark.parametrize("size", [4, 3])
def test_member_silent_before_accept(size: int, silence: str) -> None:
    swarm = build_swarm(size)
    initiator, silent = swarm.keys[0], swarm.keys[-1]
    if silence == "killed_at_start":
        swarm.net.kill(silent, at_ms=swarm.net.now_ms + 1)  # before its INVITE arrives
    else:
        drop_frames(swarm, sender=silent, kind="ACCEPT")
    rnd = swarm.start(initiator)
    swarm.net.run()

    outcomes = check_round_invariant(swarm, rnd)
    others = [key for key in swarm.keys if key != silent]
    if size == 4:  # the round closes at the invite timeout and runs with the other three
        assert all(isinstance(outcomes[key], RoundFinished) for key in others)
        finished = outcomes[initiator]
        assert isinstance(finished, RoundFinished)
        assert set(finished.members) == set(others)
    else:  # two are too few: cancelled
        assert all(isinstance(outcomes[key], RoundCancelled) for key in others)
        assert reasons(outcomes)[initiator] == "too_few_accepted"


@pytest.mark.parametrize(
    ("kind", "sent"),
    [
        pytest.param("ACCEPT", True, id="after_accept_before_roster"),
        pytest.param("WEIGHT_SHARE", False, id="at_first_weight_share"),
    ],
)
def test_member_silent_after_accept(kind: str, sent: bool) -> None:
    swarm = build_swarm()
    victim = swarm.keys[2]
    die_at_first(swarm, victim, kind, sent=sent)
    rnd = swarm.start(swarm.keys[0])
    swarm.net.run()

    outcomes = check_round_invariant(swarm, rnd)
    assert len(outcomes) == 3
    assert not any(isinstance(o, RoundFinished) for o in outcomes.values())


VICTIM_ROLES = ["initiator", "member"]


@pytest.mark.parametrize("role", VICTIM_ROLES)
def test_member_dies_midway_through_its_parts(role: str) -> None:
    swarm = build_swarm(n=5000, shard_bytes=1024)  # 1250-element parts: 5 shards each
    victim = swarm.keys[0 if role == "initiator" else 1]
    die_at_first(swarm, victim, "PART", sent=True)
    rnd = swarm.start(swarm.keys[0])
    swarm.net.run()

    outcomes = check_round_invariant(swarm, rnd)
    assert len(outcomes) == 3
    assert set(reasons(outcomes).values()) <= {"timeout_running", "peer_aborted"}


@pytest.mark.parametrize("role", VICTIM_ROLES)
def test_reducer_dies_before_sending_reduced(role: str) -> None:
    swarm = build_swarm()
    victim = swarm.keys[0 if role == "initiator" else 3]
    die_at_first(swarm, victim, "REDUCED", sent=False)
    rnd = swarm.start(swarm.keys[0])
    swarm.net.run()

    outcomes = check_round_invariant(swarm, rnd)
    assert len(outcomes) == 3
    assert set(reasons(outcomes).values()) <= {"timeout_running", "peer_aborted"}


# ---- 4b: dead peers that the transport reports (refused dials), and the roster wait -------

#: With unreachable peers reported, a round ends within a few latencies of the death, not at
#: its deadline (60 s): far below this.
PROMPT_MS = 1_000


def ended_promptly(outcomes: dict[bytes, Outcome], since_ms: float) -> bool:
    return all(o.stats.ended_ms - since_ms < PROMPT_MS for o in outcomes.values())


@pytest.mark.parametrize("role", VICTIM_ROLES)
@pytest.mark.parametrize("kind", ["WEIGHT_SHARE", "PART", "REDUCED"])
def test_a_member_that_dies_mid_round_ends_the_round_at_once(role: str, kind: str) -> None:
    swarm = build_swarm(report_unreachable=True)
    victim = swarm.keys[0 if role == "initiator" else 2]
    died_at: list[float] = []

    def intercept(sender: bytes, send: Send) -> list[bytes] | None:
        if sender == victim and send.kind == kind and not died_at:
            died_at.append(swarm.net.now_ms)
            swarm.net.kill(victim)
            return []
        return None

    swarm.net.intercept = intercept
    rnd = swarm.start(swarm.keys[0])
    swarm.net.run()

    outcomes = check_round_invariant(swarm, rnd)
    assert len(outcomes) == 3 and died_at
    assert not any(isinstance(o, RoundFinished) for o in outcomes.values())
    assert "member_unreachable" in reasons(outcomes).values()
    assert ended_promptly(outcomes, died_at[0])


def test_members_stop_waiting_for_a_roster_from_a_dead_initiator() -> None:
    # The initiator dies after its INVITEs went out, before any ROSTER. The members have
    # nothing more to send it, so no transport report can help them: each gives up after
    # the invite timeout plus a grace, long before the round's deadline (a fixed 60 s here:
    # scaled to this small vector it would be about as short as the wait itself).
    swarm = build_swarm(safeguards=Safeguards(scaled_deadlines=False))
    initiator = swarm.keys[0]
    die_at_first(swarm, initiator, "ROSTER", sent=False)
    rnd = swarm.start(initiator)
    started_ms = swarm.net.now_ms
    swarm.net.run()

    outcomes = check_round_invariant(swarm, rnd)
    assert len(outcomes) == 3
    assert set(reasons(outcomes).values()) == {"timeout_await_roster"}
    wait_ms = swarm.config.invite_timeout_ms + 3_000
    for outcome in outcomes.values():
        assert outcome.stats.ended_ms - started_ms <= wait_ms + 100
        assert outcome.stats.ended_ms < rnd.deadline_ms - 10_000


def test_an_unreachable_invitee_counts_as_declined() -> None:
    # Five peers, k = 5: the dead invitee's INVITE comes back unreachable, so the roster
    # closes as soon as the other three have answered, not at the invite timeout.
    swarm = build_swarm(5, k=5, report_unreachable=True)
    dead = swarm.keys[4]
    rnd = swarm.start(swarm.keys[0], swarm.keys[1:])
    started_ms = swarm.net.now_ms
    swarm.net.kill(dead, at_ms=started_ms + 1)  # invited, dead before its INVITE arrives
    swarm.net.run()

    outcomes = check_round_invariant(swarm, rnd)
    assert len(outcomes) == 4
    assert all(isinstance(o, RoundFinished) for o in outcomes.values())
    assert dead not in outcomes[swarm.keys[0]].members  # type: ignore[union-attr]
    assert all(
        o.stats.ended_ms - started_ms < swarm.config.invite_timeout_ms for o in outcomes.values()
    )


def test_unreachable_reports_about_other_groups_or_strangers_change_nothing() -> None:
    swarm = build_swarm()
    rnd = swarm.start(swarm.keys[0])
    swarm.net.run(until_ms=swarm.net.now_ms + 2)  # INVITEs in flight
    node = swarm.peers[swarm.keys[0]].node
    stranger = Identity(b"\x77" * 32).public_key
    assert node.peer_unreachable(swarm.keys[1], b"\x00" * 16, int(swarm.net.now_ms)) == []
    assert node.peer_unreachable(stranger, rnd.group, int(swarm.net.now_ms)) == []
    assert node.current_group == rnd.group
    swarm.net.run()
    outcomes = check_round_invariant(swarm, rnd)
    assert all(isinstance(o, RoundFinished) for o in outcomes.values())


# ---- 5: an unreliable network ---------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_duplicated_and_reordered_frames_still_finish(seed: int) -> None:
    swarm = build_swarm(seed=seed, duplicate=0.3, jitter_ms=50)
    rnd = swarm.start(swarm.keys[0])
    swarm.net.run()

    outcomes = check_round_invariant(swarm, rnd)
    assert len(outcomes) == 4
    assert all(isinstance(o, RoundFinished) for o in outcomes.values())
    assert sum(swarm.net.refused[key]["replay"] for key in swarm.keys) > 0


@pytest.mark.parametrize("seed", range(8))
def test_lossy_network_finishes_or_aborts_cleanly(seed: int) -> None:
    swarm = build_swarm(seed=seed, loss=0.2, duplicate=0.1, jitter_ms=20)
    rnd = swarm.start(swarm.keys[0])
    swarm.net.run()

    check_round_invariant(swarm, rnd)


def test_a_member_that_misses_one_reduced_part_holds_everyone_back() -> None:
    # Nobody applies an average until every member confirmed it: the initiator, lacking a
    # reduced part, never confirms, so the others wait for its CONFIRM and all time out. Each
    # blames whom it waits for: the initiator the reducer, the others the initiator.
    swarm = build_swarm()
    initiator, reducer = swarm.keys[0], swarm.keys[1]
    drop_frames(swarm, sender=reducer, kind="REDUCED", to=initiator)
    rnd = swarm.start(initiator)
    swarm.net.run()

    outcomes = check_round_invariant(swarm, rnd)
    assert set(reasons(outcomes).values()) == {"timeout_running"}
    blamed = {key: o.blamed for key, o in outcomes.items() if isinstance(o, RoundAborted)}
    assert blamed == {
        initiator: (reducer,),
        **{key: (initiator,) for key in swarm.keys[1:]},
    }


# ---- 6-7: a malicious initiator forges the roster -------------------------------------------

EVIL_EPHEMERAL_KEY = EphemeralKey.generate(b"\x66" * 32).public_key


@dataclass(frozen=True)
class RosterForgery:
    """What a malicious initiator has at hand to replace one member's ACCEPT in its ROSTER."""

    initiator: Identity
    outsider: Identity
    earlier_accepts: dict[bytes, bytes]  # member -> its ACCEPT frame from an earlier group

    def evil_accept(self, signer: Identity, sender: bytes, genuine: bytes) -> bytes:
        """An ACCEPT carrying the initiator's own ephemeral key, in place of ``genuine``."""
        body = Accept(EVIL_EPHEMERAL_KEY, SCHEMA_HASH)
        return resign(signer, verify_envelope(genuine), body, sender)


def accept_by_another_identity(forgery: RosterForgery, member: bytes, genuine: bytes) -> bytes:
    return forgery.evil_accept(forgery.outsider, forgery.outsider.public_key, genuine)


def corrupted_signature(forgery: RosterForgery, member: bytes, genuine: bytes) -> bytes:
    return genuine[:-1] + bytes([genuine[-1] ^ 1])  # the signature is the frame's tail


def substituted_key_signed_as_member(
    forgery: RosterForgery, member: bytes, genuine: bytes
) -> bytes:
    return forgery.evil_accept(forgery.initiator, member, genuine)


def substituted_key_signed_as_initiator(
    forgery: RosterForgery, member: bytes, genuine: bytes
) -> bytes:
    return forgery.evil_accept(forgery.initiator, forgery.initiator.public_key, genuine)


def member_accept_from_an_earlier_group(
    forgery: RosterForgery, member: bytes, genuine: bytes
) -> bytes:
    return forgery.earlier_accepts[member]


FORGERIES = {
    forge.__name__: forge
    for forge in (
        accept_by_another_identity,
        corrupted_signature,
        substituted_key_signed_as_member,
        substituted_key_signed_as_initiator,
        member_accept_from_an_earlier_group,
    )
}


@pytest.mark.parametrize("forgery_name", FORGERIES)
def test_forged_accept_in_roster_makes_every_honest_member_abort(forgery_name: str) -> None:
    swarm = build_swarm(5, record=True)
    initiator, target, outsider = swarm.keys[0], swarm.keys[1], swarm.keys[4]
    candidates = swarm.keys[1:4]
    # An honest earlier round with the same initiator: the source of replayable ACCEPTs.
    earlier = swarm.start(initiator, candidates)
    swarm.net.run()
    check_round_invariant(swarm, earlier)
    swarm.new_contributions(seed=1)  # the earlier round spent the first ones
    forgery = RosterForgery(
        swarm.peers[initiator].identity,
        swarm.peers[outsider].identity,
        {
            env.sender: frame
            for env, frame in swarm.deliveries_in(earlier.group)
            if env.type == "ACCEPT"
        },
    )
    forge = FORGERIES[forgery_name]

    def tamper_roster(sender: bytes, send: Send) -> list[bytes] | None:
        if sender != initiator or send.kind != "ROSTER":
            return None
        envelope = verify_envelope(send.frame)
        roster = envelope.body
        assert isinstance(roster, Roster)
        j = roster.members.index(target)
        accepts = list(roster.accepts)
        accepts[j] = forge(forgery, target, accepts[j])
        forged = Roster(roster.members, tuple(accepts), roster.deadline_ms)
        return [resign(forgery.initiator, envelope, forged, initiator)]

    swarm.net.intercept = tamper_roster
    since = len(swarm.net.deliveries)
    rnd = swarm.start(initiator, candidates)
    swarm.net.run()

    outcomes = check_round_invariant(swarm, rnd, malicious=[initiator])
    members = set(candidates)
    assert set(outcomes) == members
    assert all(isinstance(outcomes[key], RoundAborted) for key in members)
    assert reasons(outcomes)[target] in {"roster_altered_my_accept", "peer_aborted"}
    assert set(reasons(outcomes).values()) <= {
        "bad_roster_accept",
        "roster_altered_my_accept",
        "peer_aborted",
    }
    sent_by_members = {
        env.type for env, _ in swarm.deliveries_in(rnd.group, since) if env.sender in members
    }
    assert sent_by_members.isdisjoint({"WEIGHT_SHARE", "PART", "REDUCED"})


# ---- 8: a malformed PART ---------------------------------------------------------------------


def _reshaped(shard: Shard, data: bytes, dtype: str = "u4") -> Shard:
    return Shard(
        shard.index, shard.total, shard.offset, dtype, len(data) // 4, shard_digest(data), data
    )


BAD_PARTS: dict[str, tuple[Callable[[Shard], Shard], str]] = {
    "dtype_f4": (lambda s: _reshaped(s, s.data, "f4"), "bad_part_dtype"),
    "one_extra_element": (lambda s: _reshaped(s, s.data + bytes(4)), "oversized_part"),
    "one_element_short": (lambda s: _reshaped(s, s.data[:-4]), "bad_part"),
}


@pytest.mark.parametrize("bad_part", BAD_PARTS)
def test_malformed_part_aborts_the_reducer_and_then_everyone(bad_part: str) -> None:
    swarm = build_swarm()
    cheat = swarm.keys[1]
    reshape, expected_reason = BAD_PARTS[bad_part]
    victims: list[bytes] = []

    def tamper_first_part(sender: bytes, send: Send) -> list[bytes] | None:
        if sender != cheat or send.kind != "PART" or victims:
            return None
        victims.append(send.to)
        envelope = verify_envelope(send.frame)
        part = envelope.body
        assert isinstance(part, Part)
        forged = Part(part.part, reshape(part.shard))
        return [resign(swarm.peers[cheat].identity, envelope, forged, cheat)]

    swarm.net.intercept = tamper_first_part
    rnd = swarm.start(swarm.keys[0])
    swarm.net.run()

    outcomes = check_round_invariant(swarm, rnd, malicious=[cheat])
    (reducer,) = victims
    assert reasons(outcomes)[reducer] == expected_reason
    others = set(outcomes) - {reducer}
    assert len(others) == 2
    assert {reasons(outcomes)[key] for key in others} <= {"peer_aborted", "timeout_running"}


# ---- 8b: well-formed frames carrying garbage values -----------------------------------------

#: The message kind a cheat fills with random values, and the abort every honest member reaches.
GARBAGE: dict[str, str] = {
    "WEIGHT_SHARE": "bad_total_weight",
    "PART": "implausible_average",
    "REDUCED": "implausible_average",
}


def with_garbage(body: Message, rng: np.random.Generator) -> Message:
    """``body`` with the same shape (lengths, dtype, offsets) but random ring elements. A
    garbage REDUCED comes with the digest of its garbage part (each part is one shard here),
    so only the plausibility check can catch it."""
    if isinstance(body, WeightShare):
        return WeightShare(int(rng.integers(0, 1 << 64, dtype=np.uint64)))
    assert isinstance(body, Part | Reduced)
    values = rng.integers(0, 1 << 32, size=body.shard.length, dtype=np.uint32)
    shard = _reshaped(body.shard, values.tobytes())
    if isinstance(body, Reduced):
        assert shard.total == 1
        return Reduced(body.part, part_digest(values), shard)
    return Part(body.part, shard)


def send_garbage(swarm: Swarm, cheat: bytes, kind: str, seed: int) -> list[bytes]:
    """Make ``cheat`` send random values in every ``kind`` frame, correctly signed and
    well-formed; returns the recipients as they are tampered with."""
    rng = np.random.default_rng(seed)
    recipients: list[bytes] = []

    def intercept(sender: bytes, send: Send) -> list[bytes] | None:
        if sender != cheat or send.kind != kind:
            return None
        recipients.append(send.to)
        envelope = verify_envelope(send.frame)
        garbage = with_garbage(envelope.body, rng)
        return [resign(swarm.peers[cheat].identity, envelope, garbage, cheat)]

    swarm.net.intercept = intercept
    return recipients


@pytest.mark.parametrize("role", VICTIM_ROLES)
@pytest.mark.parametrize("kind", GARBAGE)
@pytest.mark.parametrize("k", [3, 4])
def test_garbage_values_from_one_member_abort_every_honest_member(
    k: int, kind: str, role: str
) -> None:
    # No jitter: every honest member reaches the check before any ABORT can reach it, so each
    # one aborts for the reason itself rather than as "peer_aborted".
    swarm = build_swarm(k, k=k, jitter_ms=0, record=True)
    cheat = swarm.keys[0 if role == "initiator" else 1]
    tampered = send_garbage(swarm, cheat, kind, seed=k)
    rnd = swarm.start(swarm.keys[0])
    swarm.net.run()

    outcomes = check_round_invariant(swarm, rnd, malicious=[cheat])  # none is left busy
    honest = [key for key in swarm.keys if key != cheat]
    assert set(tampered) == set(honest)
    assert set(outcomes) == set(honest)
    for key in honest:
        assert [type(o) for o in swarm.net.outcomes[key]] == [RoundAborted]
    assert reasons(outcomes) == dict.fromkeys(honest, GARBAGE[kind])
    # Each one told the whole group, through the ordinary abort path.
    for key in honest:
        aborts = [
            (env.recipient, env.body)
            for env, _ in swarm.deliveries_in(rnd.group)
            if env.sender == key and env.type == "ABORT"
        ]
        assert sorted(to for to, _ in aborts) == sorted(m for m in swarm.keys if m != key)
        assert {body for _, body in aborts} == {Abort(GARBAGE[kind])}


#: Totals W no group of m members can have (each weight is in [1, max_weight]; these are
#: beyond even the largest cap, 2^32 - 1), as functions of m.
IMPOSSIBLE_TOTALS: dict[str, Callable[[int], int]] = {
    "zero": lambda m: 0,
    "below_m": lambda m: m - 1,
    "above_m_times_max_weight": lambda m: m * ((1 << 32) - 1) + 1,
    "just_below_2^63": lambda m: (1 << 63) - 1,
    "2^64-1": lambda m: (1 << 64) - 1,
}


def fake_total_weight(swarm: Swarm, cheat: bytes, target: int) -> None:
    """Make ``cheat`` shift its weight shares so that every member sums W == ``target``."""
    true_total = sum(peer.weight for peer in swarm.peers.values())

    def shift_weight_share(sender: bytes, send: Send) -> list[bytes] | None:
        if sender != cheat or send.kind != "WEIGHT_SHARE":
            return None
        envelope = verify_envelope(send.frame)
        assert isinstance(envelope.body, WeightShare)
        value = (envelope.body.value + target - true_total) % (1 << 64)
        return [resign(swarm.peers[cheat].identity, envelope, WeightShare(value), cheat)]

    swarm.net.intercept = shift_weight_share


@pytest.mark.parametrize("total", IMPOSSIBLE_TOTALS)
@pytest.mark.parametrize("k", [3, 4])
def test_a_total_weight_no_group_can_have_aborts(k: int, total: str) -> None:
    swarm = build_swarm(k, k=k, jitter_ms=0)
    cheat = swarm.keys[1]
    fake_total_weight(swarm, cheat, IMPOSSIBLE_TOTALS[total](k))
    rnd = swarm.start(swarm.keys[0])
    swarm.net.run()

    outcomes = check_round_invariant(swarm, rnd, malicious=[cheat])
    honest = [key for key in swarm.keys if key != cheat]
    assert reasons(outcomes) == dict.fromkeys(honest, "bad_total_weight")


def test_a_total_weight_below_one_members_own_weight_stops_the_round() -> None:
    swarm = build_swarm(jitter_ms=0)
    cheat = swarm.keys[1]
    honest = [key for key in swarm.keys if key != cheat]
    heaviest = max(honest, key=lambda key: swarm.peers[key].weight)
    # One below the least W a group of 4 with `heaviest` in it can have: only it can tell.
    fake_total_weight(swarm, cheat, swarm.peers[heaviest].weight + 4 - 2)
    rnd = swarm.start(swarm.keys[0])
    swarm.net.run()

    outcomes = check_round_invariant(swarm, rnd, malicious=[cheat])
    assert set(outcomes) == set(honest)
    assert reasons(outcomes)[heaviest] == "bad_total_weight"
    # The others cannot finish without the parts `heaviest` never sent.
    assert all(isinstance(o, RoundAborted) for o in outcomes.values())


def test_large_but_plausible_values_still_finish() -> None:
    swarm = build_swarm(seed=3)
    data = np.random.default_rng(3)
    for i, peer in enumerate(swarm.peers.values()):
        peer.vector = data.uniform(-50, 50, VECTOR_LENGTH).astype(np.float32)
        peer.vector[:2] = (50.0, -50.0)  # the average is exactly +-50 there
        peer.weight = 10 + i
        peer.node.set_contribution(peer.vector, peer.weight, SCHEMA_HASH)
    rnd = swarm.start(swarm.keys[0])
    swarm.net.run()

    outcomes = check_round_invariant(swarm, rnd)  # the averages are right, too
    assert len(outcomes) == 4
    finished = [o for o in outcomes.values() if isinstance(o, RoundFinished)]
    assert len(finished) == 4
    # Within the encoding's error (scaled by S / W = 396 / 46 here) of exactly 50.
    assert 49 < np.abs(finished[0].average).max() <= 50 + 1e-4


def test_an_average_beyond_max_abs_average_aborts_honest_members_too() -> None:
    swarm = build_swarm(max_abs_average=10.0)
    for peer in swarm.peers.values():
        peer.vector[7] = 12.0  # one element of the average beyond the bound
        peer.node.set_contribution(peer.vector, peer.weight, SCHEMA_HASH)
    rnd = swarm.start(swarm.keys[0])
    swarm.net.run()

    outcomes = check_round_invariant(swarm, rnd)
    assert len(outcomes) == 4
    assert all(isinstance(o, RoundAborted) for o in outcomes.values())
    assert set(reasons(outcomes).values()) <= {"implausible_average", "peer_aborted"}
    assert "implausible_average" in reasons(outcomes).values()


# ---- 9-10, 12: frames that must be refused without effect -----------------------------------


GROUP_KINDS = [
    "ABORT",
    "ACCEPT",
    "BUSY",
    "CANCEL",
    "CONFIRM",
    "PART",
    "REDUCED",
    "ROSTER",
    "WEIGHT_SHARE",
]


def group_body(kind: str, swarm: Swarm, sender: bytes, recipient: bytes) -> Message:
    """A well-formed body of ``kind`` (any type a group's frames carry, or INVITE)."""
    shard = split_shards(np.arange(8, dtype=np.uint32))[0]
    third = next(key for key in swarm.keys if key not in (sender, recipient))
    members = (sender, recipient, third)
    deadline_ms = int(swarm.net.now_ms) + 1000
    bodies: dict[str, Callable[[], Message]] = {
        "ABORT": lambda: Abort("forged"),
        "ACCEPT": lambda: Accept(EVIL_EPHEMERAL_KEY, SCHEMA_HASH),
        "BUSY": lambda: Busy("busy"),
        "CANCEL": lambda: Cancel("forged"),
        "CONFIRM": lambda: Confirm(b"\x01" * 32, ()),
        "INVITE": lambda: Invite(
            members,
            SCHEMA_HASH,
            VECTOR_LENGTH,
            swarm.config.frac_bits,
            swarm.config.max_weight,
            deadline_ms,
        ),
        "PART": lambda: Part(1, shard),
        "REDUCED": lambda: Reduced(1, b"\x02" * 32, shard),
        "ROSTER": lambda: Roster(members, (b"accept",) * 3, deadline_ms),
        "WEIGHT_SHARE": lambda: WeightShare(7),
    }
    return bodies[kind]()


def refusal_reasons(actions: list[Action]) -> list[str]:
    """The reasons of ``actions``, which must all be refusals."""
    refused = [a for a in actions if isinstance(a, MessageRefused)]
    assert len(refused) == len(actions), actions
    return [a.reason for a in refused]


@pytest.mark.parametrize("kind", GROUP_KINDS)
def test_frame_for_an_unknown_group_is_refused_without_state(kind: str) -> None:
    swarm = build_swarm(3)
    sender, node = swarm.keys[0], swarm.peers[swarm.keys[1]].node
    body = group_body(kind, swarm, sender, node.public_key)
    frame = swarm.forge(sender, node.public_key, body, random.Random(kind).randbytes(16))
    actions = node.receive(frame, int(swarm.net.now_ms), from_peer=sender)

    assert refusal_reasons(actions) == ["unknown_group"]
    assert not node.busy and node.current_group is None


@pytest.mark.parametrize("kind", [*GROUP_KINDS, "INVITE"])
def test_frame_for_a_finished_group_is_refused_without_state(kind: str) -> None:
    swarm = build_swarm()
    rnd = swarm.start(swarm.keys[0])
    swarm.net.run(until_ms=swarm.net.now_ms + 1000)  # finished, well within the freshness window
    assert [type(o) for o in outcomes_of(swarm, rnd)] == [RoundFinished] * 4
    for sender, recipient in itertools.permutations(swarm.keys, 2):
        node = swarm.peers[recipient].node
        body = group_body(kind, swarm, sender, recipient)
        frame = swarm.forge(sender, recipient, body, rnd.group)
        actions = node.receive(frame, int(swarm.net.now_ms), from_peer=sender)
        assert refusal_reasons(actions) == ["ended_group"]
        assert not node.busy
    swarm.net.run()
    check_round_invariant(swarm, rnd)


def test_replayed_frames_of_an_earlier_group_are_refused() -> None:
    swarm = build_swarm(record=True)
    first = swarm.start(swarm.keys[0])
    swarm.net.run(until_ms=swarm.net.now_ms + 1000)
    assert [type(o) for o in outcomes_of(swarm, first)] == [RoundFinished] * 4
    recorded = list(swarm.net.deliveries)

    swarm.new_contributions(seed=99)
    second = swarm.start(swarm.keys[1])
    swarm.net.run(until_ms=swarm.net.now_ms + 8)
    assert not outcomes_of(swarm, second), "still mid-way through the second round"
    for delivery in recorded:
        node = swarm.peers[delivery.recipient].node
        actions = node.receive(delivery.frame, int(swarm.net.now_ms), from_peer=delivery.sender)
        assert refusal_reasons(actions) in (["replay"], ["ended_group"])
    swarm.net.run()

    outcomes = check_round_invariant(swarm, second)
    assert len(outcomes) == 4
    assert all(isinstance(o, RoundFinished) for o in outcomes.values())


@pytest.mark.parametrize("abort_from", ["never_invited", "invitee_left_out_of_roster"])
def test_abort_from_a_non_member_is_refused(abort_from: str) -> None:
    swarm = build_swarm(6, k=5, latency_ms=5, jitter_ms=0)
    members, left_out, outsider = swarm.keys[:4], swarm.keys[4], swarm.keys[5]
    swarm.net.kill(left_out, at_ms=swarm.net.now_ms + 1)  # dies before its INVITE arrives
    rnd = swarm.start(members[0], [*members[1:], left_out])
    # The roster closes at the invite timeout; stop once every member has it.
    swarm.net.run(until_ms=swarm.net.now_ms + swarm.config.invite_timeout_ms + 7)
    assert all(swarm.peers[key].node.current_group == rnd.group for key in members)

    sender = outsider if abort_from == "never_invited" else left_out
    for key in members:
        frame = swarm.forge(sender, key, Abort("forged"), rnd.group)
        actions = swarm.peers[key].node.receive(frame, int(swarm.net.now_ms), from_peer=sender)
        assert refusal_reasons(actions) == ["not_in_group"]
    swarm.net.run()

    outcomes = check_round_invariant(swarm, rnd, malicious=[sender])
    assert set(outcomes) == set(members)
    assert all(isinstance(o, RoundFinished) for o in outcomes.values())


# ---- 11: two initiators at once --------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_two_initiators_inviting_the_same_peer_at_once(seed: int) -> None:
    swarm = build_swarm(5, seed=seed, record=True)
    a, b, only_a, shared, only_b = swarm.keys
    first = swarm.start(a, [b, only_a, shared])
    second = swarm.start(b, [a, shared, only_b])  # same event step: each finds the other busy
    swarm.net.run()

    outcomes = [check_round_invariant(swarm, rnd) for rnd in (first, second)]
    busy_answers = {(d.sender, d.recipient) for d in swarm.net.deliveries if d.kind == "BUSY"}
    assert {(a, b), (b, a)} <= busy_answers
    for key in swarm.keys:
        assert len(swarm.net.outcomes[key]) <= 1, "no node joins two groups"
    assert set(outcomes[0]).isdisjoint(outcomes[1])
    # `shared` joins whichever invitation reached it first: that round runs, the other is
    # left with two members and cancels.
    kinds = sorted(type(o).__name__ for group in outcomes for o in group.values())
    assert kinds == ["RoundCancelled"] * 2 + ["RoundFinished"] * 3


# ---- privacy: everything on the wire is masked ----------------------------------------------


@pytest.fixture
def ephemeral_private_keys(monkeypatch: pytest.MonkeyPatch) -> dict[bytes, bytes]:
    """Every ephemeral key pair the nodes generate: public key -> private key."""
    generated: dict[bytes, bytes] = {}
    original = EphemeralKey.generate

    def recording_generate(random_bytes: bytes | None = None) -> EphemeralKey:
        key = original(random_bytes)
        generated[key.public_key] = key.private_key
        return key

    monkeypatch.setattr(EphemeralKey, "generate", staticmethod(recording_generate))
    return generated


@dataclass(frozen=True)
class GroupSecrets:
    """What the test re-derives for one group: each member's plain and masked encodings."""

    members: tuple[bytes, ...]
    plain: list[np.ndarray]  # encode(x_i, f, scale=w_i/S), S = m * max_weight
    masked: list[np.ndarray]  # plain + sum_{j>i} PRG(seed_ij) - sum_{j<i} PRG(seed_ij)
    masked_weights: list[int]  # w_i masked the same way in Z/2^64


def pairwise_masked(value: np.ndarray, i: int, seeds: dict[int, bytes]) -> np.ndarray:
    """value + sum_{j>i} PRG(seed_ij) - sum_{j<i} PRG(seed_ij), in value's ring."""
    masked = value.copy()
    for j, seed in seeds.items():
        mask = prg(seed, value.size, value.dtype.type)
        masked = masked + mask if j > i else masked - mask
    return masked


def rederive_secrets(
    swarm: Swarm, roster: Roster, group: bytes, private_keys: dict[bytes, bytes]
) -> GroupSecrets:
    """Each member's encodings, from its recorded ephemeral private key and the roster."""
    members = roster.members
    accepts = [verify_envelope(frame).body for frame in roster.accepts]
    ephemeral = [accept.ephemeral_key for accept in accepts if isinstance(accept, Accept)]
    assert len(ephemeral) == len(members)
    scale_total = len(members) * swarm.config.max_weight  # S: what every member scales by

    def seeds(i: int, label: bytes) -> dict[int, bytes]:
        private = private_keys[ephemeral[i]]
        return {
            j: derive_pair_seed(
                shared_secret(private, ephemeral[j]), group, members[i], members[j], label
            )
            for j in range(len(members))
            if j != i
        }

    plain, masked, masked_weights = [], [], []
    for i, member in enumerate(members):
        peer = swarm.peers[member]
        encoded, _ = encode(peer.vector, swarm.config.frac_bits, scale=peer.weight / scale_total)
        plain.append(encoded)
        masked.append(pairwise_masked(encoded, i, seeds(i, b"mask")))
        weight = np.array([peer.weight], dtype=np.uint64)
        masked_weights.append(int(pairwise_masked(weight, i, seeds(i, b"weight"))[0]))
    return GroupSecrets(members, plain, masked, masked_weights)


def aligned_blocks(data: bytes, size: int) -> set[bytes]:
    return {data[o : o + size] for o in range(0, len(data) - size + 1, size)}


def contains_any_block(frame: bytes, blocks: set[bytes], size: int) -> bool:
    return any(frame[o : o + size] in blocks for o in range(len(frame) - size + 1))


@pytest.mark.parametrize("ending", ["finished", "aborted"])
def test_everything_on_the_wire_is_masked(
    ending: str, ephemeral_private_keys: dict[bytes, bytes]
) -> None:
    n = 12_000
    swarm = build_swarm(n=n, shard_bytes=4096, record=True)  # 3000-element parts, 3 shards
    initiator = swarm.keys[0]
    if ending == "aborted":  # the initiator dies after the weight pre-pass, before any PART
        die_at_first(swarm, initiator, "PART", sent=False)
    rnd = swarm.start(initiator)
    swarm.net.run()

    outcomes = check_round_invariant(swarm, rnd)
    expected = RoundFinished if ending == "finished" else RoundAborted
    assert len(outcomes) == (4 if ending == "finished" else 3)
    assert all(isinstance(o, expected) for o in outcomes.values())

    recorded = swarm.deliveries_in(rnd.group)
    (roster,) = {env.body for env, _ in recorded if env.type == "ROSTER"}  # one, to everyone
    assert isinstance(roster, Roster)
    secrets = rederive_secrets(swarm, roster, rnd.group, ephemeral_private_keys)
    members = secrets.members
    bounds = part_bounds(n, len(members))
    group_sum = np.asarray(np.sum(secrets.plain, axis=0, dtype=np.uint32))  # wraps: the ring sum
    seen = {"WEIGHT_SHARE": 0, "PART": 0, "REDUCED": 0}
    for envelope, _ in recorded:
        body = envelope.body
        i = members.index(envelope.sender)
        if isinstance(body, WeightShare):
            assert body.value == secrets.masked_weights[i]
            assert body.value != swarm.peers[envelope.sender].weight
        elif isinstance(body, Part | Reduced):
            start = bounds[body.part][0] + body.shard.offset
            where = slice(start, start + body.shard.length)
            data = body.shard.array()
            if isinstance(body, Part):
                assert np.array_equal(data, secrets.masked[i][where])
                assert np.count_nonzero(data == secrets.plain[i][where]) < 0.001 * data.size
            else:  # the reducer's sum is the group's aggregate, and nothing else
                assert body.part == i
                assert np.array_equal(data, group_sum[where])
        else:
            continue
        seen[envelope.type] += 1
    senders = 4 if ending == "finished" else 3
    shards_per_part = 3
    assert seen["WEIGHT_SHARE"] == 4 * 3
    assert seen["PART"] == senders * 3 * shards_per_part
    assert seen["REDUCED"] == (4 * 3 * shards_per_part if ending == "finished" else 0)

    # No 64-byte run of any member's unmasked encoding appears in any frame: every such run
    # contains a whole 32-byte-aligned block of it, and no block appears anywhere.
    blocks = set().union(*(aligned_blocks(p.tobytes(), 32) for p in secrets.plain))
    for delivery in swarm.net.deliveries:
        assert not contains_any_block(delivery.frame, blocks, 32), delivery.kind


# ---- privacy against colluding members (SECURITY.md) ----------------------------------------


def finished_round_secrets(
    swarm: Swarm, private_keys: dict[bytes, bytes]
) -> tuple[Roster, GroupSecrets, Callable[[int, int], bytes], list[tuple[Envelope, bytes]]]:
    """Run one 4-member round to the end; its roster, secrets, pair seeds and frames."""
    rnd = swarm.start(swarm.keys[0])
    swarm.net.run()
    outcomes = check_round_invariant(swarm, rnd)
    assert len(outcomes) == 4 and all(isinstance(o, RoundFinished) for o in outcomes.values())
    recorded = swarm.deliveries_in(rnd.group)
    (roster,) = {env.body for env, _ in recorded if env.type == "ROSTER"}
    assert isinstance(roster, Roster)
    secrets = rederive_secrets(swarm, roster, rnd.group, private_keys)
    ephemeral = [verify_envelope(f).body.ephemeral_key for f in roster.accepts]  # type: ignore[attr-defined]

    def seed(i: int, j: int) -> bytes:
        shared = shared_secret(private_keys[ephemeral[i]], ephemeral[j])
        return derive_pair_seed(shared, rnd.group, roster.members[i], roster.members[j], b"mask")

    return roster, secrets, seed, recorded


def test_two_colluding_members_of_four_cannot_unmask_an_honest_one(
    ephemeral_private_keys: dict[bytes, bytes],
) -> None:
    # Members 0 and 1 pool everything they hold: their own ephemeral keys (so every pair seed
    # they share with anyone) and every frame sent to them. Stripping their masks from an
    # honest member's PART leaves it masked by the honest pair's seed, which they lack.
    n = 8_000
    swarm = build_swarm(n=n, record=True)
    roster, secrets, seed, recorded = finished_round_secrets(swarm, ephemeral_private_keys)
    colluders, honest = (0, 1), (2, 3)
    bounds = part_bounds(n, 4)
    checked = 0
    for envelope, _ in recorded:
        body = envelope.body
        if not isinstance(body, Part) or body.part not in colluders:
            continue
        h = roster.members.index(envelope.sender)
        if h not in honest:
            continue
        start = bounds[body.part][0] + body.shard.offset
        where = slice(start, start + body.shard.length)
        stripped = body.shard.array().copy()
        for c in colluders:  # remove every mask the colluders can compute
            mask = prg(seed(h, c), n, np.uint32)[where]
            stripped = stripped - mask if c > h else stripped + mask
        assert np.count_nonzero(stripped == secrets.plain[h][where]) < 0.001 * stripped.size
        other = honest[1] if h == honest[0] else honest[0]
        residue = prg(seed(h, other), n, np.uint32)[where]
        unmasked = stripped - residue if other > h else stripped + residue
        assert np.array_equal(unmasked, secrets.plain[h][where])  # only that seed was missing
        checked += 1
    assert checked == 4  # each honest member's part for each colluder


def test_all_but_one_colluding_members_learn_the_last_ones_contribution(
    ephemeral_private_keys: dict[bytes, bytes],
) -> None:
    # The documented limit of any secure sum: the group's sum minus the colluders' own
    # contributions is the remaining member's, exactly (its weighted encoding, and its
    # weight from W). Hence groups of 2 are impossible and groups of 3 protect a member only
    # against each single other member.
    swarm = build_swarm(n=2_000, record=True)
    roster, secrets, _, _ = finished_round_secrets(swarm, ephemeral_private_keys)
    group_sum = np.asarray(np.sum(secrets.plain, axis=0, dtype=np.uint32))
    colluders_sum = np.asarray(np.sum(secrets.plain[:3], axis=0, dtype=np.uint32))
    assert np.array_equal(group_sum - colluders_sum, secrets.plain[3])
    weights = [swarm.peers[m].weight for m in roster.members]
    assert sum(weights) - sum(weights[:3]) == weights[3]
