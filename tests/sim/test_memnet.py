"""The in-memory network: virtual time, deterministic replay, and each fault it injects."""

import random

import numpy as np

from gossiplearn.crypto.identity import Identity
from gossiplearn.protocol.events import RoundAborted, RoundFinished
from gossiplearn.protocol.node import Node, RoundConfig
from gossiplearn.sim.memnet import MemoryNetwork

SCHEMA = b"s" * 32


def build(net: MemoryNetwork, count: int, n: int = 500, k: int = 4) -> list[bytes]:
    rng = np.random.default_rng(count)
    for i in range(count):
        node = Node(
            Identity(bytes([i + 1]) * 32),
            RoundConfig(max_group_size=k, shard_bytes=512),
            rng=random.Random(i),
            now_ms=int(net.now_ms),
        )
        node.set_contribution(rng.normal(size=n).astype(np.float32), 1, SCHEMA)
        net.add(node)
    return list(net.nodes)


def finished(net: MemoryNetwork, keys: list[bytes]) -> list[RoundFinished]:
    return [o for k in keys for o in net.outcomes[k] if isinstance(o, RoundFinished)]


def test_same_seed_same_history():
    def history(seed: int) -> list[tuple]:
        net = MemoryNetwork(seed=seed, latency_ms=2, jitter_ms=20, duplicate=0.2, record=True)
        keys = build(net, 4)
        net.start_round(keys[0])
        net.run()
        return [(d.at_ms, d.sender, d.recipient, d.kind) for d in net.deliveries]

    assert history(3) == history(3)
    assert history(3) != history(4)


def test_time_is_virtual_and_latency_is_applied():
    net = MemoryNetwork(latency_ms=250)
    keys = build(net, 3, k=3)
    start = net.now_ms
    net.start_round(keys[0])
    net.run()
    results = finished(net, keys)
    assert len(results) == 3
    # INVITE, ACCEPT, ROSTER, READY, PART, REDUCED, CONFIRM: seven one-way trips, each
    # waiting for the last.
    assert net.now_ms - start >= 7 * 250
    assert all(r.stats.ended_ms - start == 7 * 250 for r in results)


def test_duplicates_are_delivered_and_refused_as_replays():
    net = MemoryNetwork(seed=1, duplicate=0.5)
    keys = build(net, 4)
    net.start_round(keys[0])
    net.run()
    assert len(finished(net, keys)) == 4
    assert sum(net.refused[k]["replay"] for k in keys) > 0


def test_total_loss_ends_in_cancellation_not_a_hang():
    net = MemoryNetwork(loss=0.999999)
    keys = build(net, 3, k=3)
    net.start_round(keys[0])
    net.run()
    assert net.idle and not any(net.nodes[k].busy for k in keys)
    assert [type(o).__name__ for o in net.outcomes[keys[0]]] == ["RoundCancelled"]


def test_a_dead_peer_neither_receives_nor_sends():
    net = MemoryNetwork()
    keys = build(net, 4)
    net.kill(keys[3])
    net.start_round(keys[0], candidates=keys)
    net.run()
    assert net.bytes_sent[keys[3]] == 0 and net.bytes_received[keys[3]] == 0
    assert net.outcomes[keys[3]] == []


def test_interceptor_can_drop_and_replace_frames():
    net = MemoryNetwork()
    keys = build(net, 3, k=3)
    dropped = []

    def drop_rosters(sender, send):
        if send.kind == "ROSTER":
            dropped.append(send)
            return []
        return None

    net.intercept = drop_rosters
    net.start_round(keys[0])
    net.run()
    assert len(dropped) == 2
    # The members never saw a roster. The initiator, waiting for their READYs, reaches its
    # deadline first: since 54d4087 it counts from when the roster closed (slack + transfer,
    # about 3 s), and the members wait for the roster 5 s from the INVITE. Its ABORT (a
    # transcript, accusing both) ends their wait; they answer with their reports and end at
    # once ("peer_aborted": no reports to collect before the roster), the initiator at its
    # deadline plus closing_grace_ms. Unexplained failures: nobody is struck; each member
    # suspects the initiator alone (its round ran to its deadline without this member ever
    # getting the roster: whom it says it waited for is its own doing), the initiator both.
    assert not any(net.nodes[k].busy for k in keys)
    assert finished(net, keys) == []
    outcomes = {k: net.outcomes[k] for k in keys}
    assert all(len(o) == 1 and isinstance(o[0], RoundAborted) for o in outcomes.values())
    initiator = outcomes[keys[0]][0]
    assert initiator.reason == "timeout_running"
    assert sorted(initiator.suspects) == sorted(keys[1:])
    for key in keys[1:]:
        member = outcomes[key][0]
        assert member.reason == "peer_aborted"
        assert member.suspects == (keys[0],)
        assert member.stats.ended_ms < initiator.stats.ended_ms
    assert all(o[0].blamed == () for o in outcomes.values())
    assert not any(net.suspected[k] for k in keys)  # one failure singles out nobody


def test_run_until_stops_at_the_given_time():
    net = MemoryNetwork(latency_ms=100)
    keys = build(net, 3, k=3)
    net.start_round(keys[0])
    net.run(until_ms=net.now_ms + 150)
    assert not net.idle and net.nodes[keys[0]].busy
    net.run()
    assert net.idle
