"""Group testing (protocol/suspicion.py) and the backoff table's pairs and forgiveness.

Suspicion.failed records the suspects of one unexplained failure and says whom the record now
singles out: a deadline whose suspects are one peer alone (every report led to it: struck at
once, since 711b7bd; only a deadline's since 54d4087, ``alone_is_enough``), one peer common to
at least two failures (struck), or a pair common to a full window (kept apart); a failure
sharing nobody with the older ones pushes them out.
Singling out one peer keeps the record (trimmed to the window): every further failure holding
that peer singles it out again at once. Keeping a pair apart starts the record again.
"""

from __future__ import annotations

import random

import pytest

from gossiplearn.protocol.backoff import Backoff
from gossiplearn.protocol.envelope import verify_envelope
from gossiplearn.protocol.events import RoundUsageError, Send
from gossiplearn.protocol.messages import Busy
from gossiplearn.protocol.node import RoundConfig
from gossiplearn.protocol.suspicion import WINDOW, Suspicion

from .test_round import START_MS, contribute, make_nodes

INSIDER = b"X" * 32
PEERS = [bytes([i]) * 32 for i in range(1, 21)]
A, B, C, D, E, F, G = PEERS[:7]


# ---- one insider ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({A}, {B}),
        ({A, B}, {C, D}),
        ({A, B, C}, {D}),
        (set(PEERS[:15]), set(PEERS[15:])),
    ],
    ids=["one_victim_each", "two_each", "three_then_one", "fifteen_then_five"],
)
def test_a_single_insider_is_singled_out_after_two_failures_whatever_the_victims(
    first: set[bytes], second: set[bytes]
) -> None:
    suspicion = Suspicion()
    assert suspicion.failed({INSIDER, *first}) == ()
    assert suspicion.recorded == 1
    assert suspicion.failed({INSIDER, *second}) == (INSIDER,)
    assert suspicion.singled_after == 2
    # The record is kept: the insider's next failure, whoever its victims, singles it out
    # again at once (round v3 before 1c0ab83 cleared it and waited for two more).
    assert suspicion.recorded == 2
    assert suspicion.failed({INSIDER, E}) == (INSIDER,)
    assert suspicion.recorded == 3 and suspicion.singled_after == 3
    # A failure without it shares nobody with the record: the record slides out.
    assert suspicion.failed({F, G}) == ()
    assert suspicion.recorded == 1


def test_victims_shared_by_two_failures_delay_the_verdict_until_one_does_not() -> None:
    suspicion = Suspicion()
    assert suspicion.failed({INSIDER, A, B}) == ()
    assert suspicion.failed({INSIDER, A, C}) == ()  # INSIDER and A: two in common
    assert suspicion.recorded == 2
    assert suspicion.failed({INSIDER, D}) == (INSIDER,)
    assert suspicion.singled_after == 3 and suspicion.recorded == 3  # kept, not cleared


def test_a_singled_out_peer_is_singled_out_again_by_each_failure_within_the_window() -> None:
    # PeerSuspected.failures is singled_after: how many recorded failures held the peer. The
    # record is trimmed to the window after each verdict.
    suspicion = Suspicion()
    verdicts = []
    for victim in (A, B, C, D):
        verdicts.append((suspicion.failed({INSIDER, victim}), suspicion.singled_after))
        assert suspicion.recorded <= WINDOW
    assert verdicts == [((), 0), ((INSIDER,), 2), ((INSIDER,), 3), ((INSIDER,), 4)]
    assert suspicion.failed({INSIDER, E}) == (INSIDER,)  # the fifth: the first is trimmed
    assert suspicion.recorded == WINDOW
    # It was in five failures, but only the window's are on record: the count says so
    # (since 54d4087; before, 5 of a record of 4).
    assert suspicion.singled_after == WINDOW
    # A failure without the insider shares nobody with the whole record: it pushes every
    # failure the insider was in out, and the next verdict is on the new failures alone.
    assert suspicion.failed({A, B}) == ()
    assert suspicion.recorded == 1
    assert suspicion.failed({A, C}) == (A,)
    assert suspicion.recorded == 2


def test_a_deadline_with_one_suspect_alone_singles_it_out_at_once() -> None:
    # Every report of a deadline led to one peer, and it named nobody it waited for. An
    # honest peer stuck because of someone names whom it waits for, so in the model (the
    # insider is the only cause of failure) that peer is the insider.
    suspicion = Suspicion()
    assert suspicion.failed({A}, alone_is_enough=True) == (A,)
    assert suspicion.singled_after == 1 and suspicion.recorded == 1
    # The record is kept like any other verdict's: a further failure holding A (with others)
    # singles it out again, counted over both.
    assert suspicion.failed({A, B}) == (A,)
    assert suspicion.singled_after == 2
    # Another peer alone at a deadline: singled out at once too (the record stays, for the
    # failures to come).
    assert suspicion.failed({C}, alone_is_enough=True) == (C,)
    assert suspicion.singled_after == 1 and suspicion.recorded == 3


def test_one_suspect_alone_of_another_failure_needs_a_second_failure() -> None:
    # An ABORT that accuses nobody (a peer stopping), or a roster that never came (one lost
    # frame): one suspect, but no chain of reports behind it. It takes a second such failure.
    suspicion = Suspicion()
    assert suspicion.failed({A}) == ()
    assert suspicion.failed({A}) == (A,)
    assert suspicion.singled_after == 2


def test_a_failure_with_no_suspect_records_nothing() -> None:
    suspicion = Suspicion()
    assert suspicion.failed(()) == ()
    assert suspicion.recorded == 0
    assert suspicion.failed([INSIDER, A]) == ()
    assert suspicion.failed(iter(())) == ()
    assert suspicion.recorded == 1


@pytest.mark.parametrize("seed", range(4))
def test_no_honest_peer_is_ever_singled_out_when_every_failure_holds_the_insider(
    seed: int,
) -> None:
    # A seeded random search: many records, each fed random groups that all contain the
    # insider (any size a group can have, victims drawn from a small population so that
    # they repeat a lot). Whatever the record returns holds the insider: alone when struck,
    # with one other peer when a pair is kept apart. The record never holds more than a
    # window (a verdict on one peer keeps it, trimmed to the window).
    rng = random.Random(seed)
    singled_alone = 0
    for _ in range(500):
        population = PEERS[: rng.randint(2, 8)]
        suspicion = Suspicion(window=rng.choice([2, 3, WINDOW, 6]))
        for _ in range(rng.randint(1, 30)):
            victims = rng.sample(population, rng.randint(1, min(len(population), 15)))
            singled = suspicion.failed({INSIDER, *victims})
            assert len(singled) in (0, 1, 2)
            if singled:
                assert INSIDER in singled, (singled, victims)
            if len(singled) == 1:
                singled_alone += 1
            assert suspicion.recorded <= suspicion.window
    assert singled_alone > 100  # the search did reach verdicts


@pytest.mark.parametrize("seed", range(2))
def test_suspects_ordered_or_repeated_change_nothing(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        failures = [rng.sample(PEERS[:6], rng.randint(1, 4)) for _ in range(rng.randint(1, 8))]
        plain, shuffled = Suspicion(), Suspicion()
        for failure in failures:
            noisy = failure * 2
            rng.shuffle(noisy)
            assert plain.failed(failure) == shuffled.failed(noisy)


# ---- the pair rule ----------------------------------------------------------------------------


def test_a_pair_always_together_over_a_full_window_is_kept_apart() -> None:
    # An insider spoiling only the rounds of one chosen victim: from outside, they look alike.
    suspicion = Suspicion()
    others = [C, D, E, F]
    for i, other in enumerate(others):
        singled = suspicion.failed({INSIDER, A, other})
        if i < WINDOW - 1:
            assert singled == () and suspicion.recorded == i + 1
        else:
            assert singled == tuple(sorted((INSIDER, A)))
    assert suspicion.recorded == 0


def test_the_pair_rule_follows_the_window() -> None:
    suspicion = Suspicion(window=3)
    assert suspicion.failed({A, B, C}) == ()
    assert suspicion.failed({A, B, D}) == ()
    assert suspicion.failed({A, B, E}) == tuple(sorted((A, B)))


def test_three_always_together_are_neither_struck_nor_kept_apart_the_window_slides() -> None:
    suspicion = Suspicion()
    for other in (D, E, F, G):
        assert suspicion.failed({A, B, C, other}) == ()
    assert suspicion.recorded == WINDOW - 1  # the oldest went out
    assert suspicion.failed({A, B, C}) == ()
    assert suspicion.recorded == WINDOW - 1
    # One failure without C and B: A is the one left in every recorded failure.
    assert suspicion.failed({A, D}) == (A,)


def test_a_pair_short_of_a_full_window_is_not_kept_apart() -> None:
    suspicion = Suspicion()
    for other in (C, D, E):
        assert suspicion.failed({A, B, other}) == ()
    assert suspicion.failed({F, G}) == ()  # shares nobody: the pair's record is gone
    assert suspicion.recorded == 1


def test_window_below_two_is_refused() -> None:
    for window in (-1, 0, 1):
        with pytest.raises(ValueError, match="two failures"):
            Suspicion(window)


# ---- sliding ----------------------------------------------------------------------------------


def test_a_failure_that_shares_nobody_pushes_the_older_ones_out() -> None:
    suspicion = Suspicion()
    assert suspicion.failed({A, B, C}) == ()
    assert suspicion.failed({A, B, D}) == ()
    assert suspicion.failed({E, F}) == ()  # nobody in common with either: both go
    assert suspicion.recorded == 1
    assert suspicion.failed({E, G}) == (E,)  # judged on the new failures alone


def test_sliding_drops_the_oldest_failures_only_until_someone_is_common_again() -> None:
    suspicion = Suspicion()
    assert suspicion.failed({A, B, C}) == ()
    assert suspicion.failed({A, B, D}) == ()
    # Shares D with the second failure, nobody with the first: only the first goes, and D
    # is now in both recorded failures.
    assert suspicion.failed({D, E}) == (D,)
    assert suspicion.recorded == 2 and suspicion.singled_after == 2
    assert suspicion.failed({D, F}) == (D,)  # kept: D's next failure singles it out at once
    assert suspicion.singled_after == 3


# ---- the backoff table: pairs kept apart, forgiveness ----------------------------------------


def test_keep_apart_blocks_groups_holding_both_for_a_doubling_period() -> None:
    backoff = Backoff(base_ms=5_000, max_ms=12_000)
    assert backoff.apart([A, B, C], 0) is False  # nothing kept apart yet
    assert backoff.keep_apart(A, B, 1_000) == 6_000
    assert backoff.apart([A, B], 1_000) and backoff.apart([C, B, D, A], 5_999)
    assert not backoff.apart([A, C, D], 1_000) and not backoff.apart([B], 1_000)
    assert not backoff.apart([A, B], 6_000)  # the period is over
    assert backoff.keep_apart(B, A, 6_000) == 16_000  # the same pair, either order: 10 s
    assert backoff.keep_apart(A, B, 16_000) == 28_000  # capped at 12 s
    # Kept apart is not struck: each one alone may still be invited and answered.
    assert backoff.blocked(A, 16_000) is None and backoff.blocked(B, 16_000) is None
    assert backoff.snapshot(16_000) == {}


def test_pairs_are_independent_and_cleared_with_either_peer() -> None:
    backoff = Backoff(base_ms=1_000)
    backoff.keep_apart(A, B, 0)
    backoff.keep_apart(A, C, 0)
    backoff.keep_apart(D, E, 0)
    assert backoff.apart([A, B], 10) and backoff.apart([A, C], 10) and not backoff.apart([B, C], 10)
    assert backoff.clear(A) is True  # no strikes, but two pairs
    assert not backoff.apart([A, B], 10) and not backoff.apart([A, C], 10)
    assert backoff.apart([D, E], 10)
    assert backoff.clear(A) is False
    assert backoff.keep_apart(A, B, 10) == 1_010  # a cleared pair starts again from the base


def test_forgive_takes_one_strike_off_at_a_time() -> None:
    backoff = Backoff(base_ms=1_000, max_ms=100_000)
    for now in (0, 1_000, 3_000):
        backoff.strike(A, now)
    assert backoff.snapshot(3_000)[A]["strikes"] == 3  # backed off 4 s, until 7 s
    backoff.forgive(A)
    assert backoff.snapshot(3_000)[A]["strikes"] == 2
    assert backoff.blocked(A, 6_999) == "backoff"  # the period under way is not shortened
    assert backoff.strike(A, 7_000) == 11_000  # the next strike is the third again: 4 s
    backoff.forgive(A)
    backoff.forgive(A)
    assert backoff.snapshot(7_000)[A]["strikes"] == 1
    backoff.forgive(A)  # the last strike off: the peer is forgotten
    assert backoff.blocked(A, 7_000) is None and backoff.snapshot(0) == {}
    assert backoff.strike(A, 7_000) == 8_000  # from the base again
    backoff.forgive(B)  # a peer never struck: nothing happens
    assert backoff.blocked(B, 0) is None


def test_forgive_leaves_a_refusal_and_its_strikes() -> None:
    backoff = Backoff()
    backoff.strike(A, 0)
    backoff.refuse(A)
    for _ in range(3):
        backoff.forgive(A)
    assert backoff.blocked(A, 10**15) == "refused"
    assert backoff.snapshot(0)[A] == {"strikes": 1, "backoff_s": 5.0, "refused": True}


# ---- a node keeps a pair apart ---------------------------------------------------------------


def test_a_node_neither_joins_nor_forms_a_group_holding_a_pair_kept_apart() -> None:
    nodes = make_nodes(4, RoundConfig(max_group_size=3), seed=9)
    contribute(nodes, 10, 9)
    me, a, b, c = nodes
    me.backoff.keep_apart(a.public_key, b.public_key, START_MS)
    # An INVITE naming both: declined, and no state kept.
    invites = a.start_round([me.public_key, b.public_key], START_MS)
    frame = next(s.frame for s in invites if isinstance(s, Send) and s.to == me.public_key)
    (reply,) = me.receive(frame, START_MS, from_peer=a.public_key)
    assert isinstance(reply, Send) and verify_envelope(reply.frame).body == Busy("blocked_member")
    assert not me.busy
    # Inviting: never both, whatever the random choice; always two others.
    candidates = [a.public_key, b.public_key, c.public_key]
    for _ in range(20):
        invited = {s.to for s in me.start_round(candidates, START_MS) if isinstance(s, Send)}
        assert len(invited) == 2 and not {a.public_key, b.public_key} <= invited
        me.abort("peer_stopping", START_MS)
    assert me.contribution_fresh and me.backoff.snapshot(START_MS) == {}
    # A peer kept apart from this node itself is never invited with it, and its INVITE is
    # declined.
    me.backoff.keep_apart(me.public_key, c.public_key, START_MS)
    for _ in range(5):
        with pytest.raises(RoundUsageError, match="grouped together"):
            me.start_round(candidates, START_MS)  # c, or a and b: never two that may go
    invites = c.start_round([me.public_key, a.public_key], START_MS + 1)
    frame = next(s.frame for s in invites if isinstance(s, Send) and s.to == me.public_key)
    (reply,) = me.receive(frame, START_MS + 1, from_peer=c.public_key)
    assert verify_envelope(reply.frame).body == Busy("blocked_member")  # type: ignore[union-attr]
