"""Strangers (peers nobody admits) against a live peer: they cannot use up its inbound
connection slots, their failed admissions are rate-limited per IP, and libp2p's identify and
ping are not served to them.

The flood's driver is in benchmarks/hostile_bench.py (``stranger_flood_scenario``), which the
benchmark runs with its own counts.
"""

from __future__ import annotations

import contextlib
import logging
import os
from types import ModuleType

import pytest
import trio

from gossiplearn.crypto.identity import Identity
from gossiplearn.peer.net.host import Admission, FailedAdmissions, Host
from tests.bench import load_bench

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
HANDSHAKES = 1_000
IDENTIFY = "/ipfs/id/1.0.0"
PING = "/ipfs/ping/1.0.0"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("hostile_bench")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_thousand_stranger_handshakes_then_a_new_peer_connects_and_a_round_completes(
    bench: ModuleType, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    # No rate limit, so that every one of the handshakes really happens.
    result = trio.run(bench.stranger_flood_scenario, tmp_path, HANDSHAKES, 0)
    assert result["handshakes"] == HANDSHAKES, result
    assert result["failed_admissions"] == HANDSHAKES  # each refused, after its handshake
    # py-libp2p 0.8.1 keeps one of 250 slots per inbound connection for good: every one is
    # back once the strangers are gone (without our fix: 0 left after 250).
    assert result["inbound_slots_before"] == result["inbound_slots_after"] == 250
    # Two new admitted peers reach the victim (it dials nobody) and it completes a round.
    assert result["newcomers_met_victim"] == ["inbound", "inbound"]
    assert result["round_after_flood_s"] is not None, result
    assert result["crashed"] == 0 and result["stopped_cleanly"]


@pytest.mark.timeout(60)
async def test_failed_admissions_are_rate_limited_per_ip() -> None:
    victim_id, admitted = Identity.generate(), Identity.generate()
    victim = Host(
        victim_id, LOOPBACK, Admission([admitted.public_key]), failed_admissions_per_minute=30
    )
    bench = load_bench("hostile_bench")
    async with victim.run():
        address = victim.addrs()[0]
        began = trio.current_time()
        flood = await bench.handshake_flood(address, 200, strangers=4)
        with trio.fail_after(10):
            while victim.counters.failed_admissions < flood["outcomes"].get("handshake", 0):
                await trio.sleep(0.05)
        # A burst of 30, then one every 2 s of the victim's time (plus the handshakes already
        # under way when the bucket emptied, one per stranger at most): the rest were closed
        # before the handshake. The victim's time runs from before the flood to now.
        elapsed = trio.current_time() - began
        bound = 30 + elapsed / 2 + 4 + 1
        assert 30 <= victim.counters.failed_admissions <= bound, flood
        assert victim.counters.failed_admissions == flood["outcomes"]["handshake"]
        assert victim.counters.rate_limited_connections >= 1
        # The same IP's admitted peer gets in as soon as a token is back (one every 2 s).
        async with Host(admitted, LOOPBACK, Admission([victim_id.public_key])).run() as friend:
            with trio.fail_after(10):
                while True:
                    try:
                        await friend.connect(address)
                        break
                    except Exception:
                        await trio.sleep(0.5)


def test_failed_admissions_bucket() -> None:
    bucket = FailedAdmissions(per_minute=3, max_tracked=2)
    for _ in range(3):
        assert bucket.allows("10.0.0.1", now=0.0)
        bucket.failed("10.0.0.1", now=0.0)
    assert not bucket.allows("10.0.0.1", now=0.0)
    assert bucket.allows("10.0.0.2", now=0.0)  # per IP
    assert not bucket.allows("10.0.0.1", now=19.9)
    assert bucket.allows("10.0.0.1", now=20.0)  # 3 a minute: one back every 20 s
    bucket.failed("10.0.0.2", now=0.0)
    bucket.failed("10.0.0.3", now=0.0)  # over max_tracked: the oldest full or first is dropped
    assert len(bucket) <= 2
    assert FailedAdmissions(per_minute=0).allows("10.0.0.1", now=0.0)


def test_handshakes_that_passed_the_check_together_are_all_charged() -> None:
    # Five connections passed the check while tokens were left, then all five failed: the
    # two beyond the bucket are debt, so the IP waits for 3 tokens (60 s), not 1 (20 s).
    bucket = FailedAdmissions(per_minute=3)
    for _ in range(5):
        bucket.failed("10.0.0.1", now=0.0)
    assert not bucket.allows("10.0.0.1", now=20.0)
    assert not bucket.allows("10.0.0.1", now=59.9)
    assert bucket.allows("10.0.0.1", now=60.0)


async def _read_all(stream: object) -> bytes:
    data = b""
    with contextlib.suppress(Exception):
        while chunk := await stream.read(1 << 16):  # type: ignore[attr-defined]
            data += chunk
    return data


async def _ask(host: Host, peer_id: str, protocol: str, payload: bytes = b"") -> bytes:
    """What ``peer_id`` answers on ``protocol`` ("" if it refused: a reset or EOF)."""
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID

    try:
        with trio.fail_after(5):
            stream = await host.libp2p.new_stream(ID.from_base58(peer_id), [TProtocol(protocol)])
            if payload:
                await stream.write(payload)
            if protocol == PING:
                return bytes(await stream.read(len(payload)))
            return await _read_all(stream)
    except Exception:
        return b""


@pytest.mark.timeout(60)
async def test_identify_and_ping_are_served_to_admitted_peers_only() -> None:
    victim_id, friend_id, stranger_id = (Identity.generate() for _ in range(3))
    victim = Host(victim_id, LOOPBACK, Admission([friend_id.public_key]))

    async def keep_refused_connections_open(receive: object) -> None:
        # So that only the stream-level guard can refuse the stranger (not a closed connection).
        async for _ in receive:  # type: ignore[attr-defined]
            pass

    victim._close_refused = keep_refused_connections_open  # type: ignore[method-assign]
    async with victim.run():
        address = victim.addrs()[0]
        nonce = os.urandom(32)
        async with (
            Host(friend_id, LOOPBACK, Admission([victim_id.public_key])).run() as friend,
            Host(stranger_id, LOOPBACK, Admission([victim_id.public_key])).run() as stranger,
        ):
            await friend.connect(address)
            await stranger.connect(address)
            refused_before = victim.counters.refused_streams
            identify = await _ask(stranger, victim_id.peer_id, IDENTIFY)
            ping = await _ask(stranger, victim_id.peer_id, PING, nonce)
            assert identify == b"" and ping == b""
            assert victim.counters.refused_streams - refused_before >= 2
            # The admitted peer gets both: the agent string in identify, the nonce back.
            assert b"py-libp2p" in await _ask(friend, victim_id.peer_id, IDENTIFY)
            assert await _ask(friend, victim_id.peer_id, PING, nonce) == nonce
