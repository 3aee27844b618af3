"""Strangers (peers nobody admits) against a live peer: they cannot use up its inbound
connection slots (however many addresses they have), every arrival takes a token of its IP
(given back once the peer is admitted), a connection whose IP is unknown is refused, a
handshake must finish within HANDSHAKE_TIMEOUT_S, and libp2p's identify and ping are not
served to them.

The flood is gossiplearn/testing/scenarios/floods.py (``stranger_flood_scenario`` and
``handshake_flood``), which benchmarks/hostile_bench.py runs with its own counts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from gossiplearn.crypto.identity import Identity
from gossiplearn.peer.config import load_config, save_config
from gossiplearn.peer.net import perimeter
from gossiplearn.peer.net.host import Admission, Host
from gossiplearn.peer.net.perimeter import MAX_PENDING, FailedAdmissions, Pending, PendingAdmissions
from gossiplearn.testing.cluster import prepare, running
from gossiplearn.testing.scenarios.floods import handshake_flood, stranger_flood_scenario

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
HANDSHAKES = 1_000
IDENTIFY = "/ipfs/id/1.0.0"
PING = "/ipfs/ping/1.0.0"
#: py-libp2p 0.8.1's inbound connection slots (max_connections 300 - min_connections 50).
LIBP2P_INBOUND_SLOTS = 250


class AttackSucceeded(AssertionError):
    """The attack did what its defence is there to prevent."""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_thousand_stranger_handshakes_then_a_new_peer_connects_and_a_round_completes(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    # No rate limit, so that every one of the handshakes really happens.
    result = trio.run(stranger_flood_scenario, tmp_path, HANDSHAKES, 0)
    assert result["handshakes"] == HANDSHAKES, result
    assert result["failed_admissions"] == HANDSHAKES  # each refused, after its handshake
    # py-libp2p 0.8.1 keeps one of 250 slots per inbound connection for good: every one is
    # back once the strangers are gone (without our fix: 0 left after 250).
    assert result["inbound_slots_before"] == result["inbound_slots_after"] == 250
    # Two new admitted peers reach the victim (it dials nobody) and it completes a round.
    # It dials nobody: the first newcomer came in; the second came in too, or the first named
    # it before its own connection arrived ("exchange", when a loaded machine orders them so).
    assert "inbound" in result["newcomers_met_victim"], result
    assert set(result["newcomers_met_victim"]) <= {"inbound", "exchange"}, result
    assert len(result["newcomers_met_victim"]) == 2, result
    assert result["round_after_flood_s"] is not None, result
    assert result["crashed"] == 0 and result["stopped_cleanly"]


@pytest.mark.timeout(60)
async def test_failed_admissions_are_rate_limited_per_ip() -> None:
    victim_id, admitted = Identity.generate(), Identity.generate()
    victim = Host(
        victim_id, LOOPBACK, Admission([admitted.public_key]), failed_admissions_per_minute=30
    )
    async with victim.run():
        address = victim.addrs()[0]
        began = trio.current_time()
        flood = await handshake_flood(address, 100, strangers=4)
        outcomes = Counter(flood["outcomes"])
        with trio.fail_after(10):
            while victim.counters.failed_admissions < outcomes["handshake"]:
                await trio.sleep(0.05)
        # Each arrival took a token: a burst of 30, then one every 2 s of the victim's time
        # (from before the flood to now). The rest were closed before the handshake.
        elapsed = trio.current_time() - began
        assert 30 <= victim.counters.failed_admissions <= 30 + elapsed / 2 + 1, outcomes
        assert victim.counters.failed_admissions == outcomes["handshake"]
        assert victim.counters.rate_limited_connections >= 1
        assert victim.counters.inbound_refused["rate_limited"] >= 1
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
        assert bucket.take("10.0.0.1", now=0.0)
    assert not bucket.take("10.0.0.1", now=0.0)  # none left: nothing taken
    assert not bucket.allows("10.0.0.1", now=0.0)
    assert bucket.allows("10.0.0.2", now=0.0)  # per IP
    assert not bucket.allows("10.0.0.1", now=19.9)
    assert bucket.allows("10.0.0.1", now=20.0)  # 3 a minute: one back every 20 s
    bucket.take("10.0.0.2", now=0.0)
    bucket.take("10.0.0.3", now=0.0)  # over max_tracked: the oldest full or first is dropped
    assert len(bucket) <= 2
    assert FailedAdmissions(per_minute=0).take("10.0.0.1", now=0.0)


def test_an_admitted_peer_gets_its_token_back() -> None:
    bucket = FailedAdmissions(per_minute=3)
    for _ in range(10):  # an admitted peer reconnecting: taken on arrival, given back
        assert bucket.take("10.0.0.1", now=0.0)
        bucket.refund("10.0.0.1", now=0.0)
    for _ in range(3):  # strangers on the same IP: their tokens stay taken
        assert bucket.take("10.0.0.1", now=0.0)
    assert not bucket.take("10.0.0.1", now=0.0)
    bucket.refund("10.0.0.1", now=0.0)
    bucket.refund("10.0.0.1", now=0.0)
    bucket.refund("10.0.0.1", now=0.0)
    bucket.refund("10.0.0.1", now=0.0)  # never more than per_minute
    assert [bucket.take("10.0.0.1", now=0.0) for _ in range(4)] == [True, True, True, False]


def test_pending_connections_keep_newcomers_and_close_the_oldest_of_the_busiest_ip() -> None:
    table = PendingAdmissions(per_ip=2, total=4)

    def pending(ip: str) -> Pending:
        return Pending(ip, lambda: None)

    a1, a2, a3 = pending("a"), pending("a"), pending("a")
    assert table.add(a1) == (True, None) and table.add(a2) == (True, None)
    assert table.add(a3) == (True, a1)  # its IP at per_ip: that IP's oldest goes
    assert table.of("a") == 2 and len(table) == 2 and table.closing == 1
    b1, c1, d1 = pending("b"), pending("c"), pending("d")
    assert table.add(b1) == (True, None) and table.add(c1) == (True, None)
    # All 4 taken: the newcomer stays, the oldest of the IP holding the most goes.
    assert table.add(d1) == (True, a2)
    assert len(table) == 4 and table.closing == 2
    table.admitted(b1)  # admitted: no longer pending
    assert len(table) == 3
    table.remove(a1)  # a closed one is gone (its handler returned)
    table.remove(b1)  # nothing: it was admitted
    assert len(table) == 3 and table.closing == 1
    # Connections being closed are counted too, up to ``total``: past that a newcomer that
    # would displace another is refused instead.
    for ip in "efgh":  # e fills the table; f, g, h each displace one more
        assert table.add(pending(ip))[0]
    assert len(table) == 4 and table.closing == 4
    assert table.add(pending("i")) == (False, None)
    assert len(table) == 4 and table.closing == 4
    with pytest.raises(ValueError):
        PendingAdmissions(per_ip=0, total=1)


class UnknownAddress:
    """A connection accepted after its peer reset it: its remote address is unknown."""

    def __init__(self) -> None:
        self.closed = False

    def get_remote_address(self) -> None:
        return None

    async def read(self, n: int | None = None) -> bytes:
        return b""

    async def write(self, data: bytes) -> None:
        return None

    async def close(self) -> None:
        self.closed = True


async def unknown_address_outcome() -> tuple[Counter[str], int, bool]:
    """(refusals, failed admissions, closed) after a victim got one connection whose remote
    address is unknown."""
    from libp2p.network.swarm import SwarmEvent

    victim = Host(Identity.generate(), LOOPBACK, Admission([]))
    async with victim.run():
        network = victim.libp2p.get_network()
        connection = UnknownAddress()
        with trio.fail_after(20):
            await network._do_handle_inbound_connection(
                connection, victim.libp2p.get_addrs()[0], SwarmEvent()
            )
        return victim.counters.inbound_refused, victim.counters.failed_admissions, connection.closed


@pytest.mark.timeout(60)
async def test_a_connection_whose_ip_is_unknown_is_refused_before_its_handshake(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A connection reset before we read its peer's address gives no IP: nothing to charge it
    # to. It used to go on to the handshake, uncharged, past the per-IP limit.
    refused, failed, closed = await unknown_address_outcome()
    assert refused == {"no_ip": 1} and failed == 0 and closed
    # Without the guard it gets a handshake attempt (a failed admission), charged to nobody.
    monkeypatch.setattr(perimeter, "_arrival_refusal", lambda ip, limiter, now: None)
    refused, failed, closed = await unknown_address_outcome()
    assert refused == {} and failed == 1


async def silent_connections(address: str, count: int, stack: contextlib.AsyncExitStack) -> list:
    _, _, _, _, port = address.split("/")[:5]
    sockets = []
    for _ in range(count):
        sock = trio.socket.socket()
        stack.callback(sock.close)
        await sock.connect(("127.0.0.1", int(port)))
        sockets.append(sock)
    return sockets


async def concurrent_handshakes_of_one_ip(tokens: int, connections: int) -> int:
    """How many of ``connections`` silent connections from one IP a victim with ``tokens``
    admissions a minute per IP lets into their handshake at once."""
    victim = Host(Identity.generate(), LOOPBACK, Admission([]), failed_admissions_per_minute=tokens)
    async with victim.run(), contextlib.AsyncExitStack() as stack:
        await silent_connections(victim.addrs()[0], connections, stack)
        counters = victim.counters
        with trio.fail_after(20):
            while len(victim.pending) + sum(counters.inbound_refused.values()) < connections:
                await trio.sleep(0.01)
        return len(victim.pending)


@pytest.mark.timeout(60)
async def test_each_arrival_takes_a_token_of_its_ip(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tokens used to be charged when a handshake failed (up to 10 s later): until then, an IP
    # could hold as many handshakes as it liked. Now 5 tokens are 5 handshakes at once.
    assert await concurrent_handshakes_of_one_ip(tokens=5, connections=8) == 5
    monkeypatch.setattr(perimeter, "_arrival_refusal", lambda ip, limiter, now: None)
    assert await concurrent_handshakes_of_one_ip(tokens=5, connections=8) == 8


async def silent_connection_held_s(bound_s: float) -> float | None:
    """How long a victim keeps a silent connection (None: still open after ``bound_s``)."""
    victim = Host(Identity.generate(), LOOPBACK, Admission([]))
    async with victim.run(), contextlib.AsyncExitStack() as stack:
        (sock,) = await silent_connections(victim.addrs()[0], 1, stack)
        began = trio.current_time()
        with trio.move_on_after(bound_s):
            with contextlib.suppress(OSError):
                await sock.recv(1)  # b"" once the victim closes it
            with trio.fail_after(5):  # and its libp2p slot is back
                while victim.libp2p.get_network()._inbound_limiter.borrowed_tokens:
                    await trio.sleep(0.01)
            assert victim.counters.inbound_refused == {"handshake_timeout": 1}
            return trio.current_time() - began
    return None


@pytest.mark.timeout(60)
async def test_a_silent_connection_is_closed_after_the_handshake_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(perimeter, "HANDSHAKE_TIMEOUT_S", 0.5)
    held = await silent_connection_held_s(bound_s=4.0)
    assert held is not None and 0.5 <= held < 4.0
    # Without it, libp2p's own limit (10 s) applies: still open at 8x the timeout.
    monkeypatch.setattr(perimeter, "HANDSHAKE_TIMEOUT_S", 60.0)
    assert await silent_connection_held_s(bound_s=4.0) is None


# ---- class 8 of the round v3 issue: strangers with many addresses, against a live daemon ----


@dataclass
class Flood:
    """Silent (and reset) connections from many loopback addresses, each slot renewed 0.2 s
    after the victim closes it."""

    connected: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)


async def flood(port: int, addresses: int, per_address: int, stats: Flood) -> None:
    async def one(ip: str, reset: bool, start_s: float) -> None:
        # Started 5 ms apart: hundreds of SYNs at once overflow libp2p's listen backlog (128)
        # and the kernel makes the rest retry 1 s, 3 s, 7 s later.
        await trio.sleep(start_s)
        while True:
            sock = trio.socket.socket()
            try:
                await sock.bind((ip, 0))
                await sock.connect(("127.0.0.1", port))
                stats.connected += 1
                if reset:  # an RST at close: often before the victim asks for the address
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    with contextlib.suppress(OSError):
                        while await sock.recv(4096):
                            pass
            except OSError as exc:
                stats.outcomes[type(exc).__name__] += 1
            finally:
                sock.close()
            await trio.sleep(0.2)

    async with trio.open_nursery() as nursery:
        for a in range(addresses):
            for i in range(per_address):
                # 127.0.0.1 is the admitted peers' address: the strangers use others of 127/8.
                ip = f"127.0.{a // 200}.{2 + a % 200}"
                nursery.start_soon(one, ip, i % 5 == 4, (i * addresses + a) * 0.005)


def inbound_slots_free(daemon: Any) -> int:
    return int(daemon.host.libp2p.get_network()._inbound_limiter.available_tokens)


async def many_addresses_scenario(work_dir: Path, guarded: bool) -> dict[str, Any]:
    """A victim daemon (dialing nobody) under a flood of connections from 40 loopback
    addresses, 10 at once each: 8 silent (320 > libp2p's 250 slots) and 2 reset at once; then
    two admitted daemons start, which must connect to it (inbound) for it to complete a
    round."""
    dirs = prepare(work_dir, 3, interval_s=1.0)
    config = load_config(dirs[0])
    config.peer.bootstrap = []
    save_config(dirs[0], config)
    result: dict[str, Any] = {}
    async with running(dirs[:1], live=0) as (victim,):
        host = victim.host
        if not guarded:  # the caps on connections not yet admitted, switched off
            host.pending = PendingAdmissions(10**6, 10**6)
        port = int(victim.config.peer.listen[0].split("/")[4])
        stats = Flood()
        lowest = {"free": LIBP2P_INBOUND_SLOTS, "pending": 0, "closing": 0}

        async def sample() -> None:
            while True:
                lowest["free"] = min(lowest["free"], inbound_slots_free(victim))
                lowest["pending"] = max(lowest["pending"], len(host.pending))
                lowest["closing"] = max(lowest["closing"], host.pending.closing)
                await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample)
            nursery.start_soon(flood, port, 40, 10, stats)
            # The flood has taken hold: the pending table is full (unguarded: every slot is).
            with trio.fail_after(60):
                while lowest["free"] > 0 and (lowest["pending"] < MAX_PENDING or not guarded):
                    await trio.sleep(0.01)
            if guarded:
                began = trio.current_time()
                rounds = victim.rounds.completed
                async with running(dirs[1:], live=0):
                    with trio.fail_after(120):
                        while victim.rounds.completed == rounds and lowest["free"] > 0:
                            await trio.sleep(0.01)
                    result["round_after_s"] = round(trio.current_time() - began, 1)
                    result["met_victim"] = sorted(n.source for n in victim.table.all())
            result["inbound_slots_free_lowest"] = lowest["free"]
            result["pending_highest"] = lowest["pending"]
            result["closing_highest"] = lowest["closing"]
            result["refused"] = dict(host.counters.inbound_refused)
            result["flood"] = {"connected": stats.connected, **stats.outcomes}
            result["open_fds"] = victim.status_document()["process"]["open_fds"]
            nursery.cancel_scope.cancel()
        # The flood over, every slot the strangers held comes back (what is still borrowed
        # belongs to live connections), and libp2p's resource manager lets go of every one it
        # counted for them (we end handshakes by closing them: cancelling leaked its count).
        network = host.libp2p.get_network()

        def left() -> dict[str, int]:
            connections = len(network.get_connections())
            return {
                "pending": len(host.pending),
                "closing": host.pending.closing,
                "slots_borrowed_beyond_connections": max(
                    0, network._inbound_limiter.borrowed_tokens - connections
                ),
                "counted_beyond_connections": max(
                    0, network._resource_manager._current_connections - connections
                ),
            }

        # Closing 320 connections takes the victim's event loop a few seconds; at load 15 it
        # took over 30 s once. What is still held after 90 s is a leak, and says which.
        with trio.move_on_after(90):
            while any(left().values()):
                await trio.sleep(0.05)
        result["left_after_flood"] = left()
        result["resource_manager_connections"] = network._resource_manager._current_connections
    return result


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "guarded",
    [
        pytest.param(True, id="guarded"),
        pytest.param(
            False,
            id="without_pending_caps",
            marks=pytest.mark.xfail(raises=AttackSucceeded, strict=True),
        ),
    ],
)
def test_strangers_with_many_addresses_cannot_fill_the_inbound_slots(
    tmp_path: Path, guarded: bool
) -> None:
    # The red team's class 8: silent connections from 40 addresses of 127/8 kept all 250
    # inbound slots full (admitted peers failed to connect 4 times in 6). Now strangers hold
    # at most 2 x MAX_PENDING (64 handshaking, 64 being closed).
    result = trio.run(many_addresses_scenario, tmp_path, guarded)
    if result["inbound_slots_free_lowest"] == 0:
        raise AttackSucceeded(f"every inbound slot taken by strangers: {result}")
    assert not any(result["left_after_flood"].values()), result
    assert result["pending_highest"] == MAX_PENDING, result
    # The two admitted peers (at most 2 connections each) were all that held slots besides.
    assert result["inbound_slots_free_lowest"] >= LIBP2P_INBOUND_SLOTS - 2 * MAX_PENDING - 4
    # The victim knew nobody: the first newcomer came in; the second came in too, or was
    # named to the victim by the first before its own connection arrived (a loaded machine
    # orders them so), which the table records as "exchange".
    assert "inbound" in result["met_victim"], result
    assert set(result["met_victim"]) <= {"inbound", "exchange"}, result
    assert len(result["met_victim"]) == 2, result
    assert result["round_after_s"] is not None, result
    assert result["refused"].get("no_ip", 0) + result["refused"].get("evicted", 0) > 0, result


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
