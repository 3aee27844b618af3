"""Freshness and replay: each (group, sender, seq) accepted once, memory stays bounded."""

import pytest

from gossiplearn.protocol.errors import ReplayedMessage, ReplayTableFull, StaleMessage
from gossiplearn.protocol.replay import ReplayGuard, SequenceCounter, sequence_start

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
