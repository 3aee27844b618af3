"""Hostile peers against live peer daemons on 127.0.0.1, one scenario each, each asserting a
figure. The scenarios are gossiplearn/testing/scenarios/hostile.py and floods.py
(benchmarks/hostile_bench.py runs them with bigger counts and prints them as one JSON line).

- A peer nobody admits, opening streams on every protocol: no byte comes back, no stream is
  served, the refusal is counted, the victim is unchanged.
- An admitted peer sending envelopes with a wrong signature: all refused for "signature".
- A peer offering only the plaintext security transport: cannot connect.
- The recorder of a real round replaying its frames (and the ones it received) to the other
  members right after the round, and to a restarted member past the freshness window: 0
  accepted.
- A member sending validly signed PART shards of garbage: every honest member aborts the
  round (implausible_average, or the ABORT of a member that saw it first), its backbone
  unchanged; round v3 strikes nobody for it (blamed == (), the others are suspects) and group
  testing singles the garbage sender out at each honest peer, after its second spoiled round.
- An admitted peer flooding 1,000 round streams with ~1 MiB garbage frames while three honest
  daemons keep doing rounds: capped at the per-peer stream limit, refusals counted, memory
  bounded, rounds go on.

Plus, fast: the round engine's per-peer frame quota, on its own.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from gossiplearn.peer.net import engine as engine_module
from gossiplearn.peer.net.engine import PEER_FRAMES, RoundEngine
from gossiplearn.peer.net.host import MAX_STREAMS_PER_PEER
from gossiplearn.testing.fakes import IdleMachine
from gossiplearn.testing.scenarios import hostile
from gossiplearn.testing.scenarios.floods import flood_scenario
from gossiplearn.testing.scenarios.live import watching_handler_errors

STRANGER_STREAMS = 40
FORGED = 60
REPLAYED = 60
#: Each honest peer initiates once, with the next honest peer and the garbage sender: every
#: honest peer is in two spoiled rounds, with a different honest peer each time.
GARBAGE_ROUNDS = 3
FLOOD_SECONDS = 20.0
FLOOD_STREAMS = 1_000
#: Measured here: ~100 MB (the whole process: 32 queued frames of ~1 MiB, their copies while
#: read and decoded, allocator slack; yamux held < 1 MB unread), the same over 15, 20 or 60 s;
#: the same flood without the stream cap and the frame quota grew ~600 MB in 15 s. 200 leaves
#: 2x room. (Without either defence the stream and frame maxima below fail as well.)
FLOOD_RSS_GROWTH_MB = 200.0
#: Measured here: 11-13 rounds in a 15-20 s flood (every round has all three honest peers, the
#: victim included); 2 still shows rounds go on, without flaking on a busy box.
FLOOD_MIN_ROUNDS = 2
#: The member that computes the average first aborts with implausible_average and tells the
#: others, who may hear its ABORT before their own average is complete.
ABORTED_BY_GARBAGE = {"implausible_average", "peer_aborted"}


def run_watched(fn: Any, *args: Any) -> tuple[Any, dict[str, int]]:
    """``trio.run(fn, *args)``, with the host's handler exceptions classified."""
    with watching_handler_errors() as watcher:
        result = trio.run(fn, *args)
    return result, dict(watcher.kinds)


def no_unexpected_handler_errors(kinds: dict[str, int]) -> None:
    assert not [k for k in kinds if k.startswith("unexpected")], kinds


@pytest.fixture(scope="module")
def solo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One victim (never inviting) against a stranger, a forger and a plaintext-only peer."""
    options = hostile.Options(stranger=STRANGER_STREAMS, forged=FORGED)
    report, kinds = run_watched(hostile.solo_scenarios, tmp_path_factory.mktemp("solo"), options)
    no_unexpected_handler_errors(kinds)
    assert report["alive"], "the victim no longer answers a PING and a STATUS request"
    assert report["stopped_cleanly"]
    return dict(report)


@pytest.fixture(scope="module")
def rounds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three honest daemons and an insider: a real round of the honest three and its replay,
    then rounds of three with the insider sending garbage."""
    options = hostile.Options(replayed=REPLAYED, stale_wait_s=None, garbage_rounds=GARBAGE_ROUNDS)
    report, kinds = run_watched(hostile.round_scenarios, tmp_path_factory.mktemp("rounds"), options)
    no_unexpected_handler_errors(kinds)
    assert report["crashed"] == 0
    assert report["stopped_cleanly"]
    return dict(report)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_stranger_is_served_nothing(solo: dict[str, Any]) -> None:
    stranger = solo["stranger"]
    assert sum(stranger["tried"].values()) == STRANGER_STREAMS
    assert len(stranger["tried"]) == 4  # round, peers, ping and status
    assert stranger["bytes_back"] == 0
    assert stranger["served"] == 0
    assert stranger["bytes_read_by_victim"] == 0
    assert stranger["handler_errors_growth"] == 0
    # Each burst came over a fresh connection, refused (and streams opened on it before the
    # hang-up landed are refused too).
    assert stranger["refused_connections_growth"] >= 1
    # Neighbours, rounds, busy, model digest and refused-message counters: all unchanged.
    assert stranger["changed"] == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_forged_signatures_are_all_refused(solo: dict[str, Any]) -> None:
    forged = solo["forged"]
    assert forged["sent"] == FORGED
    assert forged["send_errors"] == {}
    assert forged["reached_machine"] == FORGED
    assert forged["accepted"] == 0
    assert forged["refused"] == {"signature": FORGED}
    assert forged["rejected_growth"] == {"signature": FORGED}
    assert forged["replies"] == 0  # no ACCEPT (nor BUSY) to a forged INVITE
    assert not forged["busy_seen"]
    assert forged["changed"] == []  # rounds, busy, model digest


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_plaintext_only_peer_cannot_connect(solo: dict[str, Any]) -> None:
    plaintext = solo["plaintext"]
    assert not plaintext["connected"]
    assert plaintext["connect_error"] is not None
    assert plaintext["streams_opened"] == 0
    assert plaintext["victim_connections"] == 0
    assert plaintext["served"] == 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_replayed_round_frames_are_all_refused(rounds: dict[str, Any]) -> None:
    replayed = rounds["replayed"]
    assert replayed["round"] == ["finished"] * 3
    assert replayed["recorded_own"] > 0 and replayed["recorded_foreign"] > 0
    assert replayed["sent"] == REPLAYED
    assert replayed["accepted"] == 0
    # Its own frames are replays; the others' frames are not its to send.
    assert set(replayed["refused"]) == {"replay", "sender_mismatch"}
    assert sum(replayed["refused"].values()) == REPLAYED
    assert replayed["changed"] == []
    # A member restarted with an empty replay table, past the freshness window.
    assert replayed["offline_accepted"] == 0
    assert replayed["offline_refused"] == {"stale": replayed["offline_sent"]}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_garbage_parts_abort_the_round_for_every_honest_member(rounds: dict[str, Any]) -> None:
    garbage = rounds["garbage"]
    outcomes = garbage["honest_outcomes"]
    assert garbage["not_invited"] == 0
    assert sum(outcomes.values()) == 2 * GARBAGE_ROUNDS
    seen: set[str] = set()
    for outcome in outcomes:
        kind, _, reasons = outcome.partition(":")
        assert kind == "aborted", outcomes
        seen |= set(reasons.split(","))
    assert "implausible_average" in seen and seen <= ABORTED_BY_GARBAGE, outcomes
    for members in garbage["per_round"]:  # someone in each round saw the average itself
        assert any("implausible_average" in outcome for outcome in members), garbage
    assert garbage["honest_backbones_changed"] == 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_garbage_strikes_no_honest_peer_and_group_testing_singles_out_its_sender(
    rounds: dict[str, Any],
) -> None:
    garbage = rounds["garbage"]
    # Round v3: nobody can tell who sent the garbage, so nobody is struck for a round of it;
    # every honest member records the others as suspects, the sender among them.
    assert garbage["honest_aborts"] == 2 * GARBAGE_ROUNDS
    assert garbage["blamed"] == 0
    assert garbage["suspects_without_hostile"] == 0
    # Each honest peer saw two spoiled rounds, with a different honest peer each time: the
    # garbage sender alone was in both, and it is singled out, at every honest peer.
    assert garbage["spoiled_until_singled_out"] == [2] * 3, garbage
    assert garbage["singled_out_hostile"] == 3 and garbage["singled_out_other"] == 0
    assert garbage["hostile_backed_off_by"] == 3
    assert garbage["honest_backed_off"] == 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_stream_flood_is_capped_and_rounds_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)  # not the host's debug line for every reset stream
    flood, kinds = run_watched(flood_scenario, tmp_path, FLOOD_SECONDS, FLOOD_STREAMS)
    no_unexpected_handler_errors(kinds)
    assert flood["crashed"] == 0 and flood["stopped_cleanly"]
    assert flood["warmup_rounds"] >= 1
    assert flood["streams_refused"] > 0
    assert flood["victim_rejected"]["too_many_streams"] == flood["streams_refused"]
    assert flood["honest_streams_capped"] == 0  # honest traffic never reaches the cap
    assert flood["max_active_streams"] <= MAX_STREAMS_PER_PEER
    assert flood["max_queued_frames"] <= PEER_FRAMES
    assert flood["rss_growth_mb"] < FLOOD_RSS_GROWTH_MB, flood
    assert flood["rounds_completed"] >= FLOOD_MIN_ROUNDS, flood


# ---- the engine's per-peer frame quota, without a network ----------------------------------


class FakeHost:
    """Hands out ``frames[key]`` frames to whoever reads a stream of ``key``."""

    def __init__(self, frames: dict[bytes, int]) -> None:
        self.left = dict(frames)
        self.read: dict[bytes, int] = dict.fromkeys(frames, 0)

    async def receive_frame(self, key: bytes, stream: object, max_bytes: int) -> bytes | None:
        await trio.sleep(0)
        if not self.left[key]:
            return None
        self.left[key] -= 1
        self.read[key] += 1
        return b"x" * 1000


class FakeStream:
    async def close(self) -> None:
        return None


class CountingNode(IdleMachine):
    def __init__(self) -> None:
        super().__init__()
        self.received: dict[bytes, int] = {}

    def receive(self, frame: bytes, now_ms: int, *, from_peer: bytes | None = None) -> list[Any]:
        assert from_peer is not None
        self.received[from_peer] = self.received.get(from_peer, 0) + 1
        return []


@pytest.mark.timeout(30)
async def test_one_peer_cannot_queue_more_than_its_quota_nor_block_the_others() -> None:
    hog, other = b"h" * 32, b"o" * 32
    host = FakeHost({hog: 5 * PEER_FRAMES, other: 10})
    node = CountingNode()
    engine = RoundEngine(host, node, lambda action: None)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        for _ in range(4):  # several streams of the hog: one quota between them
            nursery.start_soon(engine.handle_stream, hog, FakeStream())
        nursery.start_soon(engine.handle_stream, other, FakeStream())
        await trio.testing.wait_all_tasks_blocked()
        # The machine is not running: nothing is taken, so the hog stops at its quota (with
        # room left in the inbox), while the other peer's frames all went in.
        assert host.read[hog] == engine.queued_frames(hog) == PEER_FRAMES
        assert PEER_FRAMES + 10 < engine_module.INBOX_CAPACITY
        assert host.read[other] == engine.queued_frames(other) == 10
        nursery.start_soon(engine.run)
        with trio.fail_after(10):
            while node.received.get(hog, 0) < 5 * PEER_FRAMES or node.received.get(other) != 10:
                await trio.sleep(0.01)
        assert engine.queued_frames(hog) == engine.queued_frames(other) == 0
        assert engine._quota._slots == {}  # peers with nothing queued are forgotten
        nursery.cancel_scope.cancel()
