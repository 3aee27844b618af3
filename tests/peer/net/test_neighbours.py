"""The neighbour table: capacity, liveness, exponential backoff."""

from gossiplearn.peer.net.neighbours import BACKOFF_MAX_S, NeighbourTable

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


def test_invitable_leaves_out_skewed_clocks_and_other_models():
    table = NeighbourTable(ME, 8, timeout_s=10, clock_tolerance_ms=15_000, schema_hash=b"s" * 32)
    for key in (A, B, C):
        table.add(key)
        table.seen(key, now=100)
    table.clock(A, 60_000.0)  # one late answer does not make a clock: the median does
    table.clock(B, 20.0)
    table.schema(C, b"t" * 32)
    assert [n.key for n in table.invitable(now=100)] == [B]
    assert table.clock_skewed(table.get(A)) and not table.clock_skewed(table.get(B))
    assert table.schema_differs(table.get(C))
    for _ in range(3):
        table.clock(A, 10.0)
    assert table.get(A).clock_offset_ms == 10.0  # median of 60000, 10, 10, 10
    assert [n.key for n in table.invitable(now=100)] == [A, B]


def test_a_record_gets_at_most_two_dials_seen_ips_first_and_a_confirmed_address_alone():
    table = NeighbourTable(ME, 8, timeout_s=10)
    table.add(A, ["/ip4/10.0.0.9/tcp/1/p2p/x"], "bootstrap", configured=True)
    record = [f"/ip4/10.0.0.{i}/tcp/4001/p2p/x" for i in range(8)]
    table.replace_addrs(A, record)
    neighbour = table.get(A)
    assert neighbour.dial_plan() == ["/ip4/10.0.0.9/tcp/1/p2p/x", record[0], record[1]]
    table.connected_via(A, "10.0.0.5")  # it reached us from there: its address there first
    assert neighbour.dial_plan()[1] == record[5]
    table.connected_via(A, "10.0.0.5", dialed=record[5])
    assert neighbour.dial_plan() == [record[5]]
    table.failed(A, now=0)  # it may have moved: back to the plan
    assert len(neighbour.dial_plan()) == 3
    table.replace_addrs(A, record[:1])  # a newer record drops the others
    assert neighbour.addrs == ["/ip4/10.0.0.9/tcp/1/p2p/x", record[0]]
