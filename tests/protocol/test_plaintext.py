"""The benchmark-only plaintext round: it works, it cannot join secure groups, and nothing
a peer runs can select it."""

import pathlib
import random

import numpy as np

from gossiplearn.crypto.identity import Identity
from gossiplearn.protocol.events import Send
from gossiplearn.protocol.node import Node, RoundConfig
from gossiplearn.protocol.plaintext import PlaintextNode

from .test_round import START_MS, contribute, make_nodes, route

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "gossiplearn"


def test_plaintext_round_gives_the_same_average_as_the_secure_one():
    config = RoundConfig(max_group_size=3)
    secure = make_nodes(3, config, seed=5)
    plain = [
        PlaintextNode(
            Identity(bytes([9, i + 1]) * 16), config, rng=random.Random(i), now_ms=START_MS
        )
        for i in range(3)
    ]
    contribute(secure, 100, 1)
    contribute(plain, 100, 1)
    averages = []
    for nodes in (secure, plain):
        outcomes = route(nodes, nodes[0].start_round([n.public_key for n in nodes[1:]], START_MS))
        averages.append(outcomes[nodes[0].public_key][0].average)
    assert np.array_equal(averages[0], averages[1])


def test_secure_peers_refuse_a_plaintext_initiator():
    config = RoundConfig(max_group_size=3)
    secure = make_nodes(2, config, seed=6)
    initiator = PlaintextNode(Identity(b"\x77" * 32), config, rng=random.Random(0), now_ms=START_MS)
    contribute([initiator, *secure], 10, 2)
    invites = {
        a.to: a.frame
        for a in initiator.start_round([n.public_key for n in secure], START_MS)
        if isinstance(a, Send)
    }
    for node in secure:
        reply = node.receive(invites[node.public_key], START_MS, from_peer=initiator.public_key)
        assert [a.kind for a in reply] == ["BUSY"] and not node.busy


def test_nothing_a_peer_runs_can_select_the_plaintext_variant():
    offenders = [
        path
        for path in PACKAGE.rglob("*.py")
        if path.relative_to(PACKAGE).parts[0] in ("peer", "sim", "commands", "cli.py")
        and ("protocol.plaintext" in path.read_text() or "PlaintextNode" in path.read_text())
    ]
    assert offenders == []
    # And no config key could switch masking off.
    from gossiplearn.peer.config import PeerConfig, render_config

    keys = [
        line.split("=")[0].strip()
        for line in render_config(PeerConfig()).splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    ]
    assert "ring_bits" in keys  # the keys were read
    assert not [k for k in keys if any(w in k for w in ("plain", "mask", "secure", "unsafe"))]
    assert issubclass(PlaintextNode, Node)
