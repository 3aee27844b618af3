"""The round-cost scenario (gossiplearn/testing/scenarios/rounds.py, benchmarks/round_bench.py's)
with small vectors: in memory, and over libp2p between 4 peer processes."""

from __future__ import annotations

import numpy as np
import pytest

from gossiplearn.protocol.node import Node
from gossiplearn.protocol.plaintext import PlaintextNode
from gossiplearn.testing.scenarios.rounds import libp2p_figures, memory_figures, run_round

N = 1_000


@pytest.mark.parametrize("k", [3, 4])
def test_a_memory_round_costs_what_round_v3_sends(k: int) -> None:
    line = memory_figures(k, N, repeats=1)
    assert (line["bench"], line["net"], line["k"], line["n"]) == ("round", "memory", k, N)
    # INVITE, ACCEPT, ROSTER, READY, PART, REDUCED, CONFIRM: one latency each.
    assert line["hops"] == 7
    # Each member sends k-1 of its k parts and its reduced part to k-1 members (2(k-1)/k of
    # the model), plus matchmaking and agreement: small frames, but not for a 4 kB model.
    assert 2 * (k - 1) / k < line["bytes_per_member_over_model"] < 10
    assert line["confirm_bytes_per_member"] > 0
    assert line["secure_cpu_s"] > 0 and line["plain_cpu_s"] > 0
    assert line["secure_over_plain_cpu"] > 0


def test_the_plaintext_round_averages_the_same_vectors() -> None:
    vectors = np.random.default_rng(0).normal(0, 1, size=(3, N)).astype(np.float32)
    secure, plain = run_round(Node, 3, vectors, seed=1), run_round(PlaintextNode, 3, vectors, 1)
    assert secure.hops == plain.hops == 7
    # The masks ride on the same frames: the same bytes within the framing's slack.
    assert abs(secure.bytes_per_member - plain.bytes_per_member) < 0.05 * plain.bytes_per_member


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_rounds_between_four_peer_processes_over_libp2p() -> None:
    line = libp2p_figures(N, rounds=1)
    assert (line["net"], line["k"], line["n"], line["transport"]) == ("libp2p", 4, N, "bulk")
    assert line["secure_round_s"] > 0 and line["plain_round_s"] > 0
    assert 1.0 < line["bytes_per_member_over_model"] < 10.0
    assert line["stream_mb_s"] > 0 and line["tcp_mb_s"] > 0
    assert line["bulk_fallbacks"] == 0
