"""Fuzzing a live peer: an admitted peer sends 3,000 malformed or mutated messages to a real
peer daemon over real libp2p streams (round, peers and status protocols).

The scenario is gossiplearn/testing/scenarios/fuzz.py (benchmarks/fuzz_bench.py runs it with
100,000). One fuzzing run (a module fixture, ~10 s) feeds every test below.

Shows: the victim neither crashes nor changes its model nor joins a round, answers a PING and
a STATUS request afterwards and stops cleanly; every frame that reaches a decoder on the round
and peers protocols is refused once and counted by reason in /metrics; every stream that
breaks framing is refused and counted by the host, and shows in /metrics.
"""

from __future__ import annotations

import pytest

from gossiplearn.peer.net.host import PEERS_PROTOCOL, ROUND_PROTOCOL, STATUS_PROTOCOL
from gossiplearn.testing.scenarios.fuzz import BROKEN_KINDS, FuzzReport, run_fuzz

MESSAGES = 3_000
BUDGET_S = 60.0
STOP_BUDGET_S = 5.0
PROTOCOLS = (ROUND_PROTOCOL, PEERS_PROTOCOL, STATUS_PROTOCOL)
#: Every reason code the mix must provoke (those of the envelope checks, the round machine's
#: refusals and discovery's own); a missing one means a generator stopped doing its job.
REASONS = {
    "decode",
    "schema",
    "version",
    "non_canonical",
    "not_admitted",
    "sender_mismatch",
    "signature",
    "recipient",
    "stale",
    "replay",
    "unknown_group",
    "bad_invite",
    "bad_invite_deadline",
    "not_admitted_member",
    "bad_peer_record",
    "unexpected_type",
}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> FuzzReport:
    return run_fuzz(tmp_path_factory.mktemp("fuzz"), MESSAGES, seed=20240611)


def test_the_victim_survives_unchanged(report: FuzzReport) -> None:
    assert report.messages == MESSAGES
    assert report.sent.errors == {}, "streams the victim should have taken failed"
    assert report.victim_error is None
    assert report.alive == {"ping": True, "status": True, "run_task": True}
    assert not [k for k in report.handler_error_kinds if k.startswith("unexpected")], report
    assert report.crashes == 0
    assert report.model_changes == []
    assert report.rounds_joined == 0
    assert report.stop_seconds is not None and report.stop_seconds < STOP_BUDGET_S
    assert report.seconds < BUDGET_S


def test_every_round_and_peers_frame_is_refused_and_counted_by_reason(report: FuzzReport) -> None:
    for protocol in (ROUND_PROTOCOL, PEERS_PROTOCOL):
        assert report.expected[protocol] > 0
        assert report.counted[protocol] == report.expected[protocol], protocol
    # Every generator ran, so every kind of bad frame was tried.
    for protocol, frames in report.sent.frames.items():
        assert all(count > 0 for count in frames.values()), (protocol, frames)
    missing = REASONS - set(report.rejected_by_reason)
    assert not missing, f"never refused for {sorted(missing)}: {report.rejected_by_reason}"
    # /metrics says exactly what peer.rejected says.
    assert report.metrics_by_reason == report.rejected_by_reason


def test_broken_streams_are_refused_and_counted_by_the_host(report: FuzzReport) -> None:
    for protocol in PROTOCOLS:
        broken = report.sent.broken[protocol]
        assert set(broken) == set(BROKEN_KINDS), protocol
        assert report.handler_errors[protocol] == sum(broken.values()), protocol
    kinds = set(report.handler_error_kinds)
    assert {"framing:too_large", "framing:truncated"} <= kinds
    assert all(k.startswith(("framing:", "stream:")) for k in kinds), kinds


def test_every_status_frame_is_refused_and_counted(report: FuzzReport) -> None:
    assert report.sent.frames[STATUS_PROTOCOL]["wrong_type"] > 0
    assert report.counted[STATUS_PROTOCOL] == report.expected[STATUS_PROTOCOL]


def test_broken_streams_show_in_metrics(report: FuzzReport) -> None:
    assert report.broken_in_metrics == sum(report.broken_streams.values())


def test_refused_status_requests_leave_no_stream_open(report: FuzzReport) -> None:
    assert report.state_after["yamux_streams_left_open"] == 0
