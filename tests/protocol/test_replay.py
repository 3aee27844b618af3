"""Freshness and replay: each (group, sender, seq) accepted once, memory stays bounded."""

from collections import Counter

import pytest

from gossiplearn.protocol.errors import ReplayedMessage, ReplayTableFull, StaleMessage
from gossiplearn.protocol.replay import (
    DEFAULT_FRESHNESS_MS,
    ReplayGuard,
    SequenceCounter,
    sequence_start,
)

G1, G2 = b"1" * 16, b"2" * 16
S1, S2 = b"a" * 32, b"b" * 32


def test_each_triple_is_accepted_once():
    guard = ReplayGuard()
    guard.check_and_record(G1, S1, 5, now_ms=0)
    guard.check_and_record(G1, S1, 7, now_ms=0)
    guard.check_and_record(G1, S1, 6, now_ms=0)  # reordered, still new
    guard.check_and_record(G2, S1, 5, now_ms=0)  # other group
    guard.check_and_record(G1, S2, 5, now_ms=0)  # other sender
    for seq in (5, 6, 7):
        with pytest.raises(ReplayedMessage):
            guard.check_and_record(G1, S1, seq, now_ms=0)


def test_sequence_numbers_below_the_window_are_refused():
    guard = ReplayGuard(seq_window=10)
    guard.check_and_record(G1, S1, 100, now_ms=0)
    guard.check_and_record(G1, S1, 91, now_ms=0)
    with pytest.raises(ReplayedMessage):
        guard.check_and_record(G1, S1, 90, now_ms=0)


def test_seen_set_stays_bounded():
    guard = ReplayGuard(seq_window=16)
    for seq in range(10_000):
        guard.check_and_record(G1, S1, seq, now_ms=0)
    window = guard._windows[(G1, S1)]
    assert len(window.seen) <= 2 * 16 + 1
    with pytest.raises(ReplayedMessage):
        guard.check_and_record(G1, S1, 9_999, now_ms=0)


def test_freshness_window_both_ways():
    guard = ReplayGuard(freshness_ms=1000)
    guard.check_fresh(ts_ms=10_000, now_ms=10_500)
    guard.check_fresh(ts_ms=10_000, now_ms=9_500)
    with pytest.raises(StaleMessage):
        guard.check_fresh(ts_ms=10_000, now_ms=11_001)
    with pytest.raises(StaleMessage):
        guard.check_fresh(ts_ms=10_000, now_ms=8_999)


def test_idle_pairs_are_pruned_and_the_table_is_bounded():
    guard = ReplayGuard(freshness_ms=1000, max_keys=2)
    guard.check_and_record(G1, S1, 1, now_ms=0)
    guard.check_and_record(G1, S2, 1, now_ms=1500)
    with pytest.raises(ReplayTableFull):
        guard.check_and_record(G2, S1, 1, now_ms=1500)
    guard.check_and_record(G2, S1, 1, now_ms=2001)  # (G1, S1) idle > 2 windows: pruned
    assert len(guard) == 2


def test_sequence_counter_increases_across_restarts():
    first_run = SequenceCounter(sequence_start(now_ms=1_000_000))
    last = [first_run() for _ in range(500)][-1]
    second_run = SequenceCounter(sequence_start(now_ms=1_000_001))
    assert second_run() > last


def test_one_sender_flooding_fresh_groups_is_refused_alone():
    guard = ReplayGuard(max_keys_per_sender=1024)
    refused = 0
    for i in range(5000):
        try:
            guard.check_and_record(i.to_bytes(16, "big"), S1, 1, now_ms=0)
        except ReplayTableFull:
            refused += 1
    assert refused == 5000 - 1024
    assert guard.pairs_of(S1) == 1024 and len(guard) == 1024
    guard.check_and_record(G1, S2, 1, now_ms=0)  # another sender's new group: still accepted
    guard.check_and_record((0).to_bytes(16, "big"), S1, 2, now_ms=0)  # known pairs still work
    with pytest.raises(ReplayTableFull):
        guard.check_and_record(G2, S1, 1, now_ms=0)


def test_pruning_idle_pairs_frees_a_senders_quota():
    guard = ReplayGuard(freshness_ms=1000, max_keys_per_sender=2)
    guard.check_and_record(G1, S1, 1, now_ms=0)
    guard.check_and_record(G2, S1, 1, now_ms=500)
    with pytest.raises(ReplayTableFull):
        guard.check_and_record(b"3" * 16, S1, 1, now_ms=2000)  # (G1, S1) idle only 2 windows
    guard.check_and_record(b"3" * 16, S1, 1, now_ms=2001)  # now pruned: room for one
    assert guard.pairs_of(S1) == 2
    with pytest.raises(ReplayTableFull):
        guard.check_and_record(b"4" * 16, S1, 1, now_ms=2001)
    guard.check_and_record(b"4" * 16, S1, 1, now_ms=4002)  # both older pairs idle: pruned
    assert guard.pairs_of(S1) == 1 and len(guard) == 1


def test_activity_keeps_a_pair_from_being_pruned():
    guard = ReplayGuard(freshness_ms=1000, max_keys_per_sender=2)
    guard.check_and_record(G1, S1, 1, now_ms=0)
    guard.check_and_record(G2, S1, 1, now_ms=10)
    guard.check_and_record(G1, S1, 2, now_ms=1500)  # G1 active again, G2 now the idlest
    guard.check_and_record(b"3" * 16, S1, 1, now_ms=2011)  # G2 pruned, G1 kept
    with pytest.raises(ReplayedMessage):
        guard.check_and_record(G1, S1, 2, now_ms=2011)


def test_per_sender_counts_follow_the_table_and_stay_bounded():
    guard = ReplayGuard(freshness_ms=1000, max_keys=50, max_keys_per_sender=4)
    for t in range(0, 100_000, 100):  # a new sender, and a new group, every 100 ms
        sender = (t // 300).to_bytes(32, "big")
        guard.check_and_record(t.to_bytes(16, "big"), sender, 1, now_ms=t)
        assert len(guard) <= 50
    senders = [sender for _, sender in guard._windows]
    assert dict(guard._per_sender) == dict(Counter(senders))  # no zero entries left behind
    assert sum(guard._per_sender.values()) == len(guard)


def test_idle_pairs_are_forgotten_as_new_ones_arrive():
    guard = ReplayGuard(freshness_ms=1_000)
    for i in range(100):  # one new group a second from one sender, for 100 s
        guard.check_and_record(i.to_bytes(16, "big"), b"s" * 32, 1, now_ms=i * 1_000)
    # Pairs idle for over 2 s are gone: the table holds only the last few seconds' pairs.
    assert len(guard) <= 3 and guard.pairs_of(b"s" * 32) == len(guard)


def test_the_freshness_window_grows_with_the_longest_round():
    """A round's frames are signed when their step starts: over a slow link, a model step's
    last frames arrive more than 30 s later (a 40 MB backbone at 10 Mbit/s: 32-35 s, refused
    as stale until the window followed the round timeout, and the round never finished)."""
    from gossiplearn.crypto.identity import Identity
    from gossiplearn.protocol.config import RoundConfig
    from gossiplearn.protocol.node import Node, freshness_ms

    assert freshness_ms(RoundConfig()) == DEFAULT_FRESHNESS_MS  # 60 s rounds: 30 s, as ever
    slow = RoundConfig(round_timeout_ms=300_000)
    assert freshness_ms(slow) == 150_000
    node = Node(Identity(b"s" * 32), slow, now_ms=10**12)
    node._replay.check_fresh(10**12 - 120_000, 10**12)  # two minutes old: still fresh
    with pytest.raises(StaleMessage):
        node._replay.check_fresh(10**12 - 151_000, 10**12)
