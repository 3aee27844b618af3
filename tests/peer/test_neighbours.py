"""The neighbour table: capacity, liveness, exponential backoff."""

from gossiplearn.peer.neighbours import BACKOFF_MAX_S, NeighbourTable

ME, A, B, C = (bytes([i]) * 32 for i in range(4))


def test_add_merges_addresses_and_respects_capacity_and_self():
    table = NeighbourTable(ME, max_neighbours=2, timeout_s=10)
    assert not table.add(ME, ["/x"])
    assert table.add(A, ["/a1"]) and table.add(A, ["/a2", "/a1"])
    assert table.get(A).addrs == ["/a1", "/a2"]
    assert table.add(B) and not table.add(C)
    assert len(table) == 2


def test_liveness_follows_the_last_answer():
    table = NeighbourTable(ME, 8, timeout_s=10)
    table.add(A)
    assert table.live(now=0) == []
    table.seen(A, now=100, rtt_ms=3.5, next_check_s=5)
    assert [n.key for n in table.live(now=105)] == [A]
    assert table.live(now=110.1) == []
    assert table.get(A).rtt_ms == 3.5
    assert table.due(now=104) == [] and [n.key for n in table.due(now=105)] == [A]


def test_failures_back_off_exponentially_up_to_a_cap():
    table = NeighbourTable(ME, 8, timeout_s=10)
    table.add(A)
    delays = []
    for _ in range(10):
        table.failed(A, now=0)
        delays.append(table.get(A).next_attempt)
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert max(delays) == BACKOFF_MAX_S
    table.seen(A, now=1)
    assert table.get(A).failures == 0


def test_a_failure_ends_liveness_until_the_next_answer():
    table = NeighbourTable(ME, 8, timeout_s=10)
    table.add(A)
    table.seen(A, now=100)
    table.failed(A, now=101)
    assert table.live(now=101) == []
    table.seen(A, now=102)
    assert [n.key for n in table.live(now=102)] == [A]
