"""Hostile peers against live peer daemons, one scenario each, every one measured.

Real :class:`~gossiplearn.peer.daemon.Daemon` daemons run in one trio process (``Daemon.run(stop)``),
from directories made by ``prepare_peers``, on 127.0.0.1; the attackers are libp2p hosts in
the same process, talking to them over real streams. The fuzzer's helpers (benchmarks/
fuzz_bench.py: the victim's run task, forging envelopes, liveness checks) are reused.

- stranger: a peer nobody admits connects and opens ``--stranger`` streams spread over every
  protocol (round, peers, ping, status), a valid-looking frame on each. Figures: bytes that
  ever came back, streams the victim handed to a handler, its refusal counters; its
  neighbours, rounds and model must not change.
- forged: the admitted fuzzer sends ``--forged`` envelopes in its own name whose signature is
  wrong (made by a stranger or by another admitted peer, or a valid one with a bit flipped):
  INVITEs that name the victim, and PARTs. Every one must be refused for "signature": none
  reaches the round machine's logic (0 accepted), the victim never answers nor joins a round.
- plaintext: a libp2p host offering only the plaintext security transport (/plaintext/2.0.0),
  with an identity the victim admits, dials the victim: the connection must fail, and no
  stream be served.
- replayed: three honest daemons run a real round; one of them, the recorder, then turns
  hostile and replays over its own connections (a replay can only come from there: an
  envelope's sender must be the connection's authenticated peer, and Noise protects the
  transport) ``--replayed`` frames to the other members: its own frames of the round, and
  frames the others sent it (signed by them). Right after the round (replay/sender_mismatch),
  optionally again after the 30 s freshness window (stale, ``--stale-wait``), and offline: a
  member's machine restarted with an empty replay table, fed the recorder's frames 31 s
  later (stale). 0 accepted.
- garbage: the same three, one of them hostile: its machine (an Insider with the GarbageParts attack) sends
  validly signed, well-formed PART shards of random values. ``--garbage-rounds`` rounds, by
  honest initiators: every honest member must abort (the average is implausible), its
  backbone unchanged, and nobody crash.
- flood: three honest daemons doing rounds every ~1 s; an admitted attacker tries to keep
  ``--streams`` round streams to the victim open at once (reopening any the victim resets),
  writing ~1 MiB garbage frames on each as fast as it can, for ``--flood-seconds``. Figures:
  RSS growth of the process (victim, its two honest neighbours and the attacker) over its
  level before the flood, rounds the victim completed meanwhile, streams it refused as
  "too_many_streams", and the most streams/frames of the attacker it ever held.

- strangers: ``--handshakes`` stranger handshakes (8 strangers at once, each connecting and
  hanging up again and again) against a daemon that dials nobody, first without the per-IP
  limit on failed admissions (so every handshake happens: py-libp2p's inbound slots must all
  come back), then with the default limit; after each, two new admitted daemons start and
  must reach it (inbound) for it to complete a round. Figures: handshakes, slots left, seconds
  until its first round after the flood.
- skew: four daemons, one whose ping answers say its clock is ``--skew`` seconds ahead, for
  ``--skew-seconds``: the offset the others estimate, how soon they flag it, and how many of
  their invitations name it once flagged (must be 0).

Prints one JSON line: streams_served_to_stranger, forged_accepted, replayed_accepted,
plaintext_connected, garbage_round_outcomes (honest members' outcomes by kind),
flood_rss_growth_mb, flood_rounds_completed, flood_streams_refused, crashes (a daemon's run
task died or did not stop, a handler raised something other than a framing or stream
error, or a liveness check failed), seconds; then each scenario's details. Exits 1 if any
attack got through or anything crashed.

Usage: python benchmarks/hostile_bench.py [--stranger 1000] [--forged 1000] [--replayed 1000]
       [--stale-wait 31] [--garbage-rounds 3] [--streams 1000] [--flood-seconds 60]
       [--handshakes 1000] [--skew 60] [--skew-seconds 30]
       [--dir DIR (default a temp dir)]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import msgpack
import multiaddr
import numpy as np
import trio

from gossiplearn.crypto.identity import Identity, load_key_file, public_key_from_peer_id
from gossiplearn.peer.config import IDENTITY_FILE, load_config, save_config
from gossiplearn.peer.daemon import Daemon
from gossiplearn.peer.net.host import (
    FAILED_ADMISSIONS_PER_MINUTE,
    MAX_STREAMS_PER_PEER,
    PEERS_PROTOCOL,
    PING_PROTOCOL,
    ROUND_PROTOCOL,
    STATUS_PROTOCOL,
    Admission,
    Host,
    split_p2p_multiaddr,
)
from gossiplearn.protocol import Invite, Part, split_shards
from gossiplearn.protocol.events import Action, MessageRefused
from gossiplearn.protocol.node import Node
from gossiplearn.protocol.replay import DEFAULT_FRESHNESS_MS
from gossiplearn.sim.config import SimConfig
from gossiplearn.sim.daemons import prepare_peers
from gossiplearn.testing.cluster import paused
from gossiplearn.testing.insider import GarbageParts, Insider

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
READY_TIMEOUT_S = 120.0
ROUND_TIMEOUT_S = 60.0  # a triggered round must have ended (any outcome) by then
DRAIN_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
ATTEMPT_TIMEOUT_S = 10.0
STRANGER_BURST = 20  # streams the stranger opens at once on each of its connections
CONCURRENCY = 8  # attack streams in flight at once (stranger, forged, replayed)
BATCH = 50  # frames per stream (forged, replayed)
FLOOD_FRAME_BYTES = 1 << 20  # a full shard's worth of garbage: under the round frame limit
FLOOD_REOPEN_S = 0.2  # pause before an attack stream the victim refused is reopened
SAMPLE_S = 0.25
FLOOD_STRANGERS = 8  # stranger hosts handshaking at once


def load_fuzz_bench() -> ModuleType:
    """benchmarks/fuzz_bench.py, loaded by path (benchmarks/ is not a package)."""
    if "fuzz_bench" in sys.modules:
        return sys.modules["fuzz_bench"]
    path = Path(__file__).resolve().with_name("fuzz_bench.py")
    spec = importlib.util.spec_from_file_location("fuzz_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


fuzz = load_fuzz_bench()
Victim = fuzz.Victim
prefixed = fuzz.prefixed
now_ms = fuzz.now_ms


# ---- running daemons -----------------------------------------------------------------------


def prepare_round_peers(work_dir: Path, peers: int, interval_s: float) -> list[Path]:
    """``peers`` daemon directories admitting each other, inviting every ~``interval_s``."""
    return prepare_peers(work_dir, SimConfig(peers=peers, mode="inproc", interval_s=interval_s))


@asynccontextmanager
async def running(
    dirs: Sequence[Path], live_neighbours: int = 0, insiders: int = 0
) -> AsyncIterator[list[Any]]:
    """Run a daemon for each directory until the block ends; yields their Victims once every
    one has trained and sees ``live_neighbours`` live neighbours. The last ``insiders`` run an
    :class:`~gossiplearn.testing.insider.Insider` (honest until an attack is set)."""
    victims = [
        Victim(d, node_factory=Insider if i >= len(dirs) - insiders else Node)
        for i, d in enumerate(dirs)
    ]
    async with trio.open_nursery() as nursery:
        for victim in victims:
            nursery.start_soon(victim.run)
        try:
            with trio.fail_after(READY_TIMEOUT_S):
                while not all(v.trained and live(v) >= live_neighbours for v in victims):
                    dead = [v.error for v in victims if v.done.is_set()]
                    if dead:
                        raise RuntimeError(f"a daemon did not start: {dead}")
                    await trio.sleep(0.05)
            yield victims
        finally:
            for victim in victims:
                victim.stop.set()
            with trio.move_on_after(STOP_TIMEOUT_S):
                for victim in victims:
                    await victim.done.wait()
            nursery.cancel_scope.cancel()


def live(victim: Any) -> int:
    peer = victim.peer
    return len(peer.table.live(time.monotonic())) if peer.ready else 0


def dead(victims: Iterable[Any]) -> int:
    """Daemons whose run task ended (crashed) while they should be running."""
    return sum(v.done.is_set() or v.error is not None for v in victims)


def key_of(victim: Any) -> bytes:
    return bytes(victim.peer.identity.public_key)


@dataclass
class Tap:
    """Watches a daemon's round machine: every frame it is given, and whether it was accepted
    (its actions hold no MessageRefused: it went past every check into the round logic)."""

    peer: Daemon
    keep: bool = False  # keep accepted frames and who sent them
    frames: int = 0
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    kept: list[tuple[bytes | None, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        node = self.peer.node
        original = node.receive

        def receive(frame: bytes, now: int, *, from_peer: bytes | None = None) -> list[Action]:
            actions = original(frame, now, from_peer=from_peer)
            refusals = [a for a in actions if isinstance(a, MessageRefused)]
            if refusals:
                self.refused[refusals[0].reason] += 1
            else:
                self.accepted += 1
                if self.keep:
                    self.kept.append((from_peer, frame))
            self.frames += 1
            return actions

        node.receive = receive  # type: ignore[method-assign]  # the engine looks it up each time

    def close(self) -> None:
        with contextlib.suppress(AttributeError):
            del self.peer.node.receive  # type: ignore[method-assign]


def round_counts(peer: Daemon) -> tuple[int, int, int]:
    rounds = peer.rounds
    return rounds.completed, rounds.aborted, rounds.cancelled


def inbox_busy(victims: Iterable[Any]) -> Callable[[], bool]:
    return lambda: any(v.busy() for v in victims)


async def drain(count: Callable[[], int], target: int, busy: Callable[[], bool]) -> None:
    """Until ``count()`` reaches ``target`` or stalls (fuzz_bench.drain), bounded."""
    with trio.move_on_after(DRAIN_TIMEOUT_S):
        await fuzz.drain(count, target, busy)


async def send_frames(
    host: Host, to: bytes, frames: Sequence[bytes], errors: Counter[str], protocol: str
) -> None:
    """One stream carrying ``frames``; waits for the receiver to finish it."""
    try:
        with trio.fail_after(ATTEMPT_TIMEOUT_S):
            stream: Any = await host.open_stream(to, protocol)
            await stream.write(b"".join(prefixed(f) for f in frames))
            await stream.close_write()
            with contextlib.suppress(EOFError):
                while await stream.read(1 << 16):
                    pass
            await stream.close()
    except Exception as exc:
        errors[type(exc).__name__] += 1


async def send_batches(
    host: Host, plan: Sequence[tuple[bytes, bytes]], errors: Counter[str], protocol: str
) -> None:
    """``plan``'s (recipient, frame) pairs, BATCH frames a stream, CONCURRENCY streams at once."""
    batches: list[tuple[bytes, list[bytes]]] = []
    for to, frame in plan:
        if not batches or batches[-1][0] != to or len(batches[-1][1]) >= BATCH:
            batches.append((to, []))
        batches[-1][1].append(frame)
    limiter = trio.CapacityLimiter(CONCURRENCY)

    async def one(to: bytes, frames: list[bytes]) -> None:
        async with limiter:
            await send_frames(host, to, frames, errors, protocol)

    async with trio.open_nursery() as nursery:
        for to, frames in batches:
            nursery.start_soon(one, to, frames)


# ---- one victim: stranger, forged, plaintext -----------------------------------------------


@dataclass
class Solo:
    """One victim (never inviting), the admitted fuzzer's host and identities."""

    victim: Any
    host: Host  # the admitted fuzzer, running
    forge: Any  # fuzz_bench.Forge signing as the fuzzer
    accomplice: Identity  # admitted by the victim, never running

    @property
    def key(self) -> bytes:
        return key_of(self.victim)


@asynccontextmanager
async def solo_victim(work_dir: Path, seed: int = 0) -> AsyncIterator[Solo]:
    dirs = fuzz.prepare(Path(work_dir))
    fuzzer = load_key_file(dirs[1] / IDENTITY_FILE)
    accomplice = load_key_file(dirs[2] / IDENTITY_FILE)
    async with running(dirs[:1]) as (victim,):
        key = key_of(victim)
        forge = fuzz.Forge(random.Random(seed), key, fuzzer, accomplice)
        host = Host(fuzzer, LOOPBACK, Admission([key]))
        host.handle(PING_PROTOCOL, lambda k, s: fuzz.echo_ping(host, k, s))
        host.handle(PEERS_PROTOCOL, fuzz.close_stream)
        async with host.run():
            await host.connect(victim.peer.host.addrs()[0])
            yield Solo(victim, host, forge, accomplice)


def victim_snapshot(peer: Daemon) -> dict[str, Any]:
    """What an attack must leave unchanged."""
    return {
        "neighbours": sorted(n.peer_id for n in peer.table.all()),
        "rounds": round_counts(peer),
        "busy": peer.node.busy,
        "model_digest": peer.model.model_digest(),
        "rejected": dict(peer.rejected),
    }


async def stranger_scenario(solo: Solo, streams: int) -> dict[str, Any]:
    """A peer nobody admits opens ``streams`` streams over every protocol."""
    from libp2p.peer.id import ID

    peer = solo.victim.peer
    stranger = Identity.generate()
    forge = fuzz.Forge(random.Random(1), solo.key, stranger, solo.accomplice)
    address = peer.host.addrs()[0]
    counters = peer.host.counters
    before = victim_snapshot(peer)
    refused_before = (counters.refused_connections, counters.refused_streams)
    errors_before = sum(counters.handler_errors.values())

    def frame_for(protocol: str) -> bytes:
        if protocol == ROUND_PROTOCOL:  # a valid INVITE naming the victim
            members = (stranger.public_key, solo.key, solo.accomplice.public_key)
            invite = Invite(members, os.urandom(32), 100, 20, 1, now_ms() + 30_000)
            return forge.envelope(forge.round, invite)  # type: ignore[no-any-return]
        if protocol == PING_PROTOCOL:
            return os.urandom(16)
        target = forge.peers if protocol == PEERS_PROTOCOL else forge.status
        return forge.envelope(target)  # type: ignore[no-any-return]

    protocols = (ROUND_PROTOCOL, PEERS_PROTOCOL, PING_PROTOCOL, STATUS_PROTOCOL)
    tried: Counter[str] = Counter()
    opened: Counter[str] = Counter()
    bytes_back: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    host = Host(stranger, LOOPBACK, Admission([solo.key]))
    victim_id = ID.from_base58(peer.peer_id)

    async def attempt(protocol: str) -> None:
        tried[protocol] += 1
        try:
            with trio.fail_after(ATTEMPT_TIMEOUT_S):
                stream: Any = await host.open_stream(solo.key, protocol)
                opened[protocol] += 1
                await stream.write(prefixed(frame_for(protocol)))
                with contextlib.suppress(EOFError):
                    while chunk := await stream.read(1 << 16):
                        bytes_back[protocol] += len(chunk)
                await stream.close()
            outcomes["eof"] += 1
        except Exception as exc:  # refused: reset, closed connection, timeout...
            outcomes[type(exc).__name__] += 1

    # Bursts: a fresh connection each (the victim hangs up on us), then STRANGER_BURST streams
    # at once on it, before the hang-up lands if we can.
    async with host.run():
        for start in range(0, streams, STRANGER_BURST):
            with contextlib.suppress(Exception), trio.move_on_after(ATTEMPT_TIMEOUT_S):
                await host.libp2p.disconnect(victim_id)
            try:
                with trio.fail_after(ATTEMPT_TIMEOUT_S):
                    await host.connect(address)
            except Exception as exc:
                outcomes[f"connect:{type(exc).__name__}"] += 1
            async with trio.open_nursery() as nursery:
                for i in range(start, min(streams, start + STRANGER_BURST)):
                    nursery.start_soon(attempt, protocols[i % len(protocols)])
    key = stranger.public_key
    after = victim_snapshot(peer)
    return {
        "streams": streams,
        "tried": dict(tried),
        "opened": dict(opened),  # libp2p gave the stranger a stream, reset at once
        "outcomes": dict(outcomes),
        "bytes_back": sum(bytes_back.values()),
        "served": counters.served_streams[key],
        "bytes_read_by_victim": counters.bytes_in[key],
        "refused_connections_growth": counters.refused_connections - refused_before[0],
        "refused_streams_growth": counters.refused_streams - refused_before[1],
        "handler_errors_growth": sum(counters.handler_errors.values()) - errors_before,
        "changed": sorted(k for k in before if before[k] != after[k]),
    }


async def forged_scenario(solo: Solo, count: int) -> dict[str, Any]:
    """``count`` envelopes from the fuzzer, in its own name, with a wrong signature."""
    peer = solo.victim.peer
    forge = solo.forge
    fuzzer = forge.fuzzer
    strangers = [Identity.generate() for _ in range(3)]
    replies: Counter[str] = Counter()

    async def record_reply(key: bytes, stream: Any) -> None:  # the victim answering us
        while await solo.host.receive_frame(key, stream, 1 << 21) is not None:
            replies["frames"] += 1
        await stream.close()

    solo.host.handle(ROUND_PROTOCOL, record_reply)

    def body(i: int) -> Any:
        if i % 2:
            shard = split_shards(np.frombuffer(os.urandom(4096), dtype="<u4"))[0]
            return Part(1, shard)
        members = (fuzzer.public_key, solo.key, solo.accomplice.public_key)
        return Invite(members, os.urandom(32), 100, 20, 1, now_ms() + 30_000)

    kinds: Counter[str] = Counter()

    def forged(i: int) -> bytes:
        kind = ("stranger_key", "accomplice_key", "flipped_bit")[i % 3]
        kinds[kind] += 1
        if kind == "flipped_bit":  # a valid signature, then one bit of it flipped
            frame = bytearray(forge.envelope(forge.round, body(i)))
            frame[-1 - forge.rng.randrange(64)] ^= 1 << forge.rng.randrange(8)
            return bytes(frame)
        signer = strangers[i % 3] if kind == "stranger_key" else solo.accomplice
        return forge.envelope(forge.round, body(i), signer=signer)  # type: ignore[no-any-return]

    before = victim_snapshot(peer)
    rejected_before = Counter(peer.rejected)
    tap = Tap(peer)
    errors: Counter[str] = Counter()
    busy_seen = False

    async def watch_busy() -> None:
        nonlocal busy_seen
        while True:
            busy_seen |= peer.node.busy
            await trio.sleep(0.01)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_busy)
            plan = [(solo.key, forged(i)) for i in range(count)]
            await send_batches(solo.host, plan, errors, ROUND_PROTOCOL)
            await drain(lambda: tap.frames, count, inbox_busy([solo.victim]))
            await trio.sleep(0.5)  # time for a reply, had there been one
            nursery.cancel_scope.cancel()
    finally:
        tap.close()
    after = victim_snapshot(peer)
    rejected = Counter(peer.rejected)
    rejected.subtract(rejected_before)
    return {
        "sent": count,
        "kinds": dict(kinds),
        "send_errors": dict(errors),
        "reached_machine": tap.frames,
        "accepted": tap.accepted,
        "refused": dict(tap.refused),
        "rejected_growth": {r: n for r, n in rejected.items() if n},
        "replies": replies["frames"],
        "busy_seen": busy_seen,
        # An admitted peer that reached us becomes a neighbour: only these must not change.
        "changed": sorted(k for k in ("rounds", "busy", "model_digest") if before[k] != after[k]),
    }


async def plaintext_scenario(solo: Solo) -> dict[str, Any]:
    """A host with only the plaintext security transport dials the victim (as an admitted
    peer, so that only the transport can refuse it)."""
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

    peer = solo.victim.peer
    identity = solo.accomplice
    key_pair = create_new_key_pair(identity.seed)
    host = new_host(
        key_pair=key_pair,
        muxer_preference="YAMUX",
        sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)},
    )
    address = peer.host.addrs()[0]
    result: dict[str, Any] = {"connected": False, "streams_opened": 0, "connect_error": None}
    try:
        async with host.run(listen_addrs=[multiaddr.Multiaddr(LOOPBACK[0])]):
            try:
                with trio.fail_after(ATTEMPT_TIMEOUT_S):
                    await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(address)))
                result["connected"] = True
            except Exception as exc:
                result["connect_error"] = type(exc).__name__
            for protocol in (ROUND_PROTOCOL, STATUS_PROTOCOL):
                try:
                    with trio.fail_after(ATTEMPT_TIMEOUT_S):
                        stream = await host.new_stream(
                            ID.from_base58(peer.peer_id), [TProtocol(protocol)]
                        )
                        result["streams_opened"] += 1
                        await stream.close()
                except Exception:
                    pass
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(3):
            await host.close()
    victim_sees = peer.host.libp2p.get_network().get_connections(ID.from_base58(identity.peer_id))
    counters = peer.host.counters
    result["victim_connections"] = len(victim_sees)
    result["served"] = counters.served_streams[identity.public_key]
    return result


async def check_alive(solo: Solo) -> bool:
    alive = await fuzz.check_alive(solo.host, solo.forge, solo.key)
    return all(alive.values()) and not solo.victim.done.is_set()


# ---- three honest daemons: replayed, garbage -----------------------------------------------


async def run_round(initiator: Any, members: Sequence[Any]) -> dict[bytes, str]:
    """Have ``initiator`` invite ``members``; each one's outcome once all have ended it:
    "finished", "aborted:<reason>", "cancelled", or "none" (nothing within the timeout)."""
    everyone = [initiator, *members]
    for v in everyone:
        # A contribution is sent in at most one round: each brings a new one, as after training.
        vector = v.peer.model.get_backbone()
        vector += np.float32(1e-6) * np.random.default_rng().standard_normal(vector.size).astype(
            np.float32
        )
        await v.peer.engine.set_contribution(vector, 1, v.peer.model.schema_hash)
    before = {
        key_of(v): (round_counts(v.peer), Counter(v.peer.rounds.abort_reasons)) for v in everyone
    }
    await initiator.peer.engine.start_round([key_of(m) for m in members])

    def ended(v: Any) -> bool:
        return round_counts(v.peer) != before[key_of(v)][0] and not v.peer.engine.view.busy

    with trio.move_on_after(ROUND_TIMEOUT_S):
        while not all(ended(v) for v in everyone) and not dead(everyone):
            await trio.sleep(0.05)
    outcomes = {}
    for v in everyone:
        counts, reasons = before[key_of(v)]
        now = round_counts(v.peer)
        if now[0] > counts[0]:
            outcomes[key_of(v)] = "finished"
        elif now[1] > counts[1]:
            grown = Counter(v.peer.rounds.abort_reasons)
            grown.subtract(reasons)
            outcomes[key_of(v)] = "aborted:" + ",".join(sorted(r for r, n in grown.items() if n))
        elif now[2] > counts[2]:
            outcomes[key_of(v)] = "cancelled"
        else:
            outcomes[key_of(v)] = "none"
    return outcomes


def capture_sends(victim: Any) -> list[tuple[bytes, bytes]]:
    """Every (recipient, frame) the daemon's round engine sends from now on."""
    engine = victim.peer.engine
    original = engine._send_batch
    sent: list[tuple[bytes, bytes]] = []

    async def send_batch(key: bytes, frames: list[bytes], *args: Any, **kwargs: Any) -> None:
        sent.extend((key, frame) for frame in frames)
        await original(key, frames, *args, **kwargs)

    engine._send_batch = send_batch
    return sent


def frame_ts(frame: bytes) -> int:
    return int(msgpack.unpackb(frame, raw=False)["ts"])


async def replayed_scenario(
    cluster: Sequence[Any], count: int, stale_wait_s: float | None = None
) -> dict[str, Any]:
    """A real round, then its recorder replays frames to the other members."""
    recorder, *members = cluster
    recorder_key = key_of(recorder)
    sent = capture_sends(recorder)
    received = Tap(recorder.peer, keep=True)
    outcomes: dict[bytes, str] = {}
    attempts = 0
    try:
        while attempts < 3 and set(outcomes.values()) != {"finished"} and not dead(cluster):
            attempts += 1
            sent.clear()
            received.kept.clear()
            outcomes = await run_round(recorder, members)
    finally:
        received.close()
    member_keys = {key_of(m) for m in members}
    own = [(to, f) for to, f in sent if to in member_keys]
    # Frames the others sent the recorder (signed by them, addressed to it), sent on to the
    # third member: what replaying someone else's message looks like.
    foreign = [
        (next(k for k in member_keys if k != sender), frame)
        for sender, frame in received.kept
        if sender in member_keys
    ]
    pool = own + foreign
    result: dict[str, Any] = {
        "round": sorted(outcomes.values()),
        "round_attempts": attempts,
        "recorded_own": len(own),
        "recorded_foreign": len(foreign),
    }
    if not own:
        result.update(sent=0, accepted=0, refused={}, changed=[])
        return result

    async def replay(plan: list[tuple[bytes, bytes]]) -> tuple[int, Counter[str], list[str]]:
        taps = [Tap(m.peer) for m in members]
        errors: Counter[str] = Counter()
        # Held still: only the replayed frames could change the members' models.
        async with paused([m.peer for m in members]):
            before = [victim_snapshot(m.peer) for m in members]
            try:
                await send_batches(recorder.peer.host, plan, errors, ROUND_PROTOCOL)
                await drain(lambda: sum(t.frames for t in taps), len(plan), inbox_busy(members))
            finally:
                for tap in taps:
                    tap.close()
            after = [victim_snapshot(m.peer) for m in members]
        refused: Counter[str] = Counter()
        for tap in taps:
            refused.update(tap.refused)
        if errors:
            refused.update({f"send_error:{k}": n for k, n in errors.items()})
        changed = sorted(
            {
                k
                for b, a in zip(before, after, strict=True)
                for k in b
                if k != "rejected" and b[k] != a[k]
            }
        )
        unseen = len(plan) - sum(t.frames for t in taps)
        if unseen:
            refused["never_reached_machine"] += unseen
        return sum(t.accepted for t in taps), refused, changed

    plan = [pool[i % len(pool)] for i in range(count)]
    accepted, refused, changed = await replay(plan)
    result.update(sent=len(plan), accepted=accepted, refused=dict(refused), changed=changed)

    # A member restarted (its replay table empty), fed the recorder's own frames once they
    # are past the freshness window: the window alone refuses them.
    last_ts = max(frame_ts(f) for _, f in own)
    later = last_ts + DEFAULT_FRESHNESS_MS + 1_000
    offline: Counter[str] = Counter()
    offline_accepted = 0
    for member in members:
        node = Node(member.peer.identity, admitted=member.peer.admission, now_ms=later)
        for to, frame in own:
            if to == key_of(member):
                actions = node.receive(frame, later, from_peer=recorder_key)
                refusals = [a.reason for a in actions if isinstance(a, MessageRefused)]
                offline[refusals[0] if refusals else "accepted"] += 1
                offline_accepted += not refusals
    result.update(offline_sent=sum(offline.values()), offline_accepted=offline_accepted)
    result["offline_refused"] = {r: n for r, n in offline.items() if r != "accepted"}

    if stale_wait_s is not None:
        wait_until = last_ts / 1000 + max(stale_wait_s, DEFAULT_FRESHNESS_MS / 1000 + 1)
        await trio.sleep(max(0.0, wait_until - time.time()))
        stale_plan = [own[i % len(own)] for i in range(count)]
        accepted, refused, changed = await replay(stale_plan)
        result.update(
            stale_sent=len(stale_plan),
            stale_accepted=accepted,
            stale_refused=dict(refused),
            stale_changed=changed,
        )
    return result


async def garbage_scenario(cluster: Sequence[Any], rounds: int) -> dict[str, Any]:
    """The last daemon turns hostile; ``rounds`` rounds, the honest ones taking turns to
    invite the two others."""
    *honest, hostile = cluster
    hostile.peer.node.attack = GarbageParts()  # the same machine, from now on hostile
    outcomes: Counter[str] = Counter()
    hostile_outcomes: Counter[str] = Counter()
    backbone_changed = 0
    per_round = []
    for r in range(rounds):
        initiator = honest[r % len(honest)]
        others = [v for v in cluster if v is not initiator]
        # The learning schedules are held still so that only the round could change a model
        # (after an aborted round a peer trains its next budget).
        async with paused([v.peer for v in honest]):
            digests = {key_of(v): v.peer.model.backbone_digest() for v in honest}
            result = await run_round(initiator, others)
            for v in honest:
                outcomes[result[key_of(v)]] += 1
                backbone_changed += v.peer.model.backbone_digest() != digests[key_of(v)]
        hostile_outcomes[result[key_of(hostile)]] += 1
        per_round.append(sorted(result[key_of(v)] for v in honest))
    return {
        "rounds": rounds,
        "honest_outcomes": dict(outcomes),
        "hostile_outcomes": dict(hostile_outcomes),
        "per_round": per_round,
        "honest_backbones_changed": backbone_changed,
    }


# ---- the flood -----------------------------------------------------------------------------


def prepare_flood(work_dir: Path) -> tuple[list[Path], Path]:
    """Three honest daemons inviting every ~1 s, and an attacker's directory (never run) that
    they admit; nobody bootstraps to the attacker."""
    dirs = prepare_round_peers(work_dir, 4, interval_s=1.0)
    honest, attacker = dirs[:3], dirs[3]
    attacker_id = load_key_file(attacker / IDENTITY_FILE).peer_id
    for directory in honest:
        config = load_config(directory)
        config.peer.bootstrap = [a for a in config.peer.bootstrap if attacker_id not in a]
        save_config(directory, config)
    return honest, attacker


def yamux_buffered(peer: Daemon, other: Identity) -> int:
    """Bytes the peer's yamux holds unread in its streams from ``other``."""
    from libp2p.peer.id import ID

    connections = peer.host.libp2p.get_network().get_connections(ID.from_base58(other.peer_id))
    return sum(
        len(buffer)
        for c in connections
        for buffer in list(getattr(c.muxed_conn, "stream_buffers", {}).values())
    )


@dataclass
class FloodStats:
    opened: int = 0
    frames: int = 0
    bytes: int = 0
    ended: Counter[str] = field(default_factory=Counter)


async def flood_scenario(
    work_dir: Path, seconds: float, streams: int, warmup_rounds: int = 1
) -> dict[str, Any]:
    honest_dirs, attacker_dir = prepare_flood(Path(work_dir))
    attacker = load_key_file(attacker_dir / IDENTITY_FILE)
    async with running(honest_dirs, live_neighbours=2) as cluster:
        victim = cluster[0]
        peer = victim.peer
        key = key_of(victim)
        # Honest rounds work before the attack (so that a zero during it means something).
        with trio.move_on_after(ROUND_TIMEOUT_S):
            while peer.rounds.completed < warmup_rounds and not dead(cluster):
                await trio.sleep(0.1)
        warmup = peer.rounds.completed
        rounds_before = [v.peer.rounds.completed for v in cluster]
        capped_before = peer.rejected["too_many_streams"]
        rss_before = fuzz.rss_mb()
        samples = dict.fromkeys(("active_streams", "queued_frames", "yamux_buffered_mb"), 0.0)
        samples["rss_mb"] = rss_before
        stats = FloodStats()
        host = Host(attacker, LOOPBACK, Admission([key]))
        payload = prefixed(os.urandom(FLOOD_FRAME_BYTES))
        started = time.perf_counter()
        async with host.run():
            await host.connect(peer.host.addrs()[0])
            deadline = trio.current_time() + seconds

            async def attack_stream() -> None:
                while trio.current_time() < deadline:
                    stream: Any = None
                    with trio.move_on_at(deadline):
                        try:
                            stream = await host.open_stream(key, ROUND_PROTOCOL, ATTEMPT_TIMEOUT_S)
                            stats.opened += 1
                            while True:
                                await stream.write(payload)
                                stats.frames += 1
                                stats.bytes += len(payload)
                        except Exception as exc:  # reset by the victim, or a write timed out
                            stats.ended[type(exc).__name__] += 1
                    if stream is not None:
                        with (
                            trio.CancelScope(shield=True),
                            trio.move_on_after(1),
                            contextlib.suppress(Exception),
                        ):
                            await stream.reset()
                    await trio.sleep(FLOOD_REOPEN_S)

            async def sample() -> None:
                while True:
                    samples["rss_mb"] = max(samples["rss_mb"], fuzz.rss_mb())
                    samples["active_streams"] = max(
                        samples["active_streams"], peer.host.active_streams(attacker.public_key)
                    )
                    samples["queued_frames"] = max(
                        samples["queued_frames"], peer.engine.queued_frames(attacker.public_key)
                    )
                    samples["yamux_buffered_mb"] = max(
                        samples["yamux_buffered_mb"], yamux_buffered(peer, attacker) / 2**20
                    )
                    await trio.sleep(SAMPLE_S)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sample)
                async with trio.open_nursery() as attackers:
                    for _ in range(streams):
                        attackers.start_soon(attack_stream)
                nursery.cancel_scope.cancel()
            flood_seconds = time.perf_counter() - started
        rounds_during = [
            v.peer.rounds.completed - b for v, b in zip(cluster, rounds_before, strict=True)
        ]
        crashed = dead(cluster)
        honest_capped = sum(
            n
            for v in cluster
            for k, n in v.peer.host.counters.capped_streams.items()
            if k != attacker.public_key
        )
        result = {
            "seconds": round(flood_seconds, 1),
            "streams": streams,
            "warmup_rounds": warmup,
            "rss_before_mb": round(rss_before, 1),
            "rss_peak_mb": round(samples["rss_mb"], 1),
            "rss_growth_mb": round(samples["rss_mb"] - rss_before, 1),
            "rounds_completed": rounds_during[0],
            "rounds_completed_per_peer": rounds_during,
            "streams_refused": peer.rejected["too_many_streams"] - capped_before,
            # Streams of honest peers refused by anyone's cap (before or during the flood).
            "honest_streams_capped": honest_capped,
            "max_active_streams": int(samples["active_streams"]),
            "max_queued_frames": int(samples["queued_frames"]),
            "max_yamux_buffered_mb": round(samples["yamux_buffered_mb"], 1),
            "stream_cap": MAX_STREAMS_PER_PEER,
            "attacker_streams_opened": stats.opened,
            "attacker_frames_written": stats.frames,
            "attacker_mb_written": round(stats.bytes / 2**20, 1),
            "attacker_mb_per_s": round(stats.bytes / 2**20 / max(flood_seconds, 1e-9), 1),
            "attacker_streams_ended": dict(stats.ended),
            "victim_rejected": dict(peer.rejected),
            "abort_reasons": dict(peer.rounds.abort_reasons),
            "crashed": crashed,
        }
    result["stopped_cleanly"] = all(v.done.is_set() and v.error is None for v in cluster)
    return result


# ---- a stranger flooding handshakes -------------------------------------------------------


def inbound_slots_free(peer: Daemon) -> int | None:
    """py-libp2p's free inbound connection slots at the peer (250 when idle)."""
    limiter = getattr(peer.host.libp2p.get_network(), "_inbound_limiter", None)
    return None if limiter is None else int(limiter.available_tokens)


async def handshake_flood(
    address: str, handshakes: int, strangers: int = FLOOD_STRANGERS
) -> dict[str, Any]:
    """``strangers`` hosts nobody admits connect to ``address`` (a Noise handshake each, then
    refused) and hang up, again and again, ``handshakes`` attempts in all."""
    from libp2p.peer.id import ID

    _, peer_id = split_p2p_multiaddr(address)
    target = ID.from_base58(peer_id)
    key = public_key_from_peer_id(peer_id)
    outcomes: Counter[str] = Counter()
    attempts = 0
    started = time.perf_counter()

    async def stranger() -> None:
        nonlocal attempts
        host = Host(Identity.generate(), LOOPBACK, Admission([key]))
        async with host.run():
            while attempts < handshakes:
                attempts += 1
                try:
                    with trio.fail_after(ATTEMPT_TIMEOUT_S):
                        await host.connect(address)
                    outcomes["handshake"] += 1
                except Exception as exc:  # closed before the handshake (rate limit), ...
                    outcomes[type(exc).__name__] += 1
                with contextlib.suppress(Exception), trio.move_on_after(ATTEMPT_TIMEOUT_S):
                    await host.libp2p.disconnect(target)

    async with trio.open_nursery() as nursery:
        for _ in range(strangers):
            nursery.start_soon(stranger)
    return {
        "attempts": attempts,
        "outcomes": dict(outcomes),
        "seconds": round(time.perf_counter() - started, 1),
    }


async def stranger_flood_scenario(
    work_dir: Path, handshakes: int, per_minute: int = 0, round_budget_s: float = 90.0
) -> dict[str, Any]:
    """A victim daemon (dialing nobody) takes ``handshakes`` stranger handshakes; then two
    new admitted daemons start, which only it can introduce to... nobody: they must connect
    to it (inbound) for it to complete a round. ``per_minute``: its failed-admission limit
    per IP (0: none, so that every handshake happens)."""
    dirs = prepare_round_peers(Path(work_dir), 3, interval_s=1.0)
    victim_dir, newcomers = dirs[0], dirs[1:]
    config = load_config(victim_dir)
    config.peer.bootstrap = []  # the newcomers must reach it: inbound connections only
    config.peer.failed_admissions_per_minute = per_minute
    save_config(victim_dir, config)
    async with running([victim_dir]) as (victim,):
        peer = victim.peer
        counters = peer.host.counters
        slots_before = inbound_slots_free(peer)
        flood = await handshake_flood(peer.host.addrs()[0], handshakes)
        with trio.move_on_after(10):  # the victim closes the last refused connections
            while counters.failed_admissions + counters.rate_limited_connections < flood[
                "outcomes"
            ].get("handshake", 0) + flood["outcomes"].get("rate_limited", 0):
                await trio.sleep(0.05)
        await trio.sleep(1.0)
        result: dict[str, Any] = {
            "handshakes": flood["outcomes"].get("handshake", 0),
            "attempts": flood["attempts"],
            "flood_seconds": flood["seconds"],
            "stranger_outcomes": flood["outcomes"],
            "failed_admissions": counters.failed_admissions,
            "rate_limited_connections": counters.rate_limited_connections,
            "per_minute": per_minute,
            "inbound_slots_before": slots_before,
            "inbound_slots_after": inbound_slots_free(peer),
            "victim_rounds_before": peer.rounds.completed,
        }
        began = time.perf_counter()
        async with running(newcomers):
            with trio.move_on_after(round_budget_s):
                while peer.rounds.completed == result["victim_rounds_before"] and not dead(
                    [victim]
                ):
                    await trio.sleep(0.1)
            result["round_after_flood_s"] = (
                round(time.perf_counter() - began, 1)
                if peer.rounds.completed > result["victim_rounds_before"]
                else None
            )
            result["newcomers_met_victim"] = sorted(n.source for n in peer.table.all())
        result["crashed"] = dead([victim])
    result["stopped_cleanly"] = victim.done.is_set() and victim.error is None
    return result


# ---- a neighbour with a skewed clock --------------------------------------------------------


async def clock_skew_scenario(
    work_dir: Path, skew_s: float, seconds: float, defence: bool = True
) -> dict[str, Any]:
    """Four daemons inviting every ~1 s; the last one's clock is ``skew_s`` ahead (as its ping
    answers tell: the daemons share this process's clock, so only what the others learn of its
    clock is skewed, not the timestamps of its messages). For ``seconds``: the offset the
    others estimate for it, how soon they flag it, and how many invitations name it (none
    with the defence; ``defence=False``: the others pick their invitees among all live
    neighbours, as before)."""
    dirs = prepare_round_peers(Path(work_dir), 4, interval_s=1.0)
    async with running(dirs) as cluster:
        *honest, skewed = cluster
        skewed.peer.discovery.clock = lambda: time.time() + skew_s
        skewed_key = key_of(skewed)
        invitations: Counter[str] = Counter()
        flagged_after: list[float | None] = [None] * len(honest)
        for i, victim in enumerate(honest):
            peer = victim.peer
            if not defence:
                peer.table.invitable = peer.table.live  # type: ignore[method-assign]
            original = peer.engine.start_round

            async def start_round(keys: list[bytes], _original: Any = original, i: int = i) -> Any:
                # Before its clock is known (the median of a few pings), it may be invited.
                known = "known" if flagged_after[i] is not None else "not_yet_known"
                invitations[f"{known}:{'skewed' if skewed_key in keys else 'others'}"] += 1
                return await _original(keys)

            peer.engine.start_round = start_round  # type: ignore[method-assign]
        rounds_before = [v.peer.rounds.completed for v in honest]
        started = time.perf_counter()
        deadline = trio.current_time() + seconds
        while trio.current_time() < deadline and not dead(cluster):
            for i, victim in enumerate(honest):
                neighbour = victim.peer.table.get(skewed_key)
                if (
                    flagged_after[i] is None
                    and neighbour is not None
                    and victim.peer.table.clock_skewed(neighbour)
                ):
                    flagged_after[i] = round(time.perf_counter() - started, 2)
            await trio.sleep(0.1)
        estimates = [
            (v.peer.table.get(skewed_key) or Any).clock_offset_ms  # type: ignore[union-attr]
            for v in honest
        ]
        waiting = [
            [w.cause for w in v.peer.waiting if w.peer == skewed.peer.peer_id] for v in honest
        ]
        result = {
            "skew_s": skew_s,
            "seconds": seconds,
            "defence": defence,
            "estimated_offset_s": [None if e is None else round(e / 1000, 3) for e in estimates],
            "worst_estimate_error_ms": max(
                (abs(e - skew_s * 1000) for e in estimates if e is not None), default=None
            ),
            "flagged_after_s": flagged_after,
            # Once the inviter has flagged its clock (by then ~3 pings have shown the skew).
            "invitations_naming_skewed": invitations["known:skewed"],
            "invitations_without_it": invitations["known:others"],
            "invitations_before_flagged": invitations["not_yet_known:skewed"]
            + invitations["not_yet_known:others"],
            "honest_rounds_completed": [
                v.peer.rounds.completed - b for v, b in zip(honest, rounds_before, strict=True)
            ],
            "waiting_causes_about_it": waiting,
            "crashed": dead(cluster),
        }
    result["stopped_cleanly"] = all(v.done.is_set() and v.error is None for v in cluster)
    return result


# ---- the whole benchmark -------------------------------------------------------------------


@dataclass
class Options:
    stranger: int = 1000
    forged: int = 1000
    replayed: int = 1000
    stale_wait_s: float | None = 31.0
    garbage_rounds: int = 3
    streams: int = 1000
    flood_seconds: float = 60.0
    handshakes: int = 1000
    skew_s: float = 60.0
    skew_seconds: float = 30.0


async def solo_scenarios(work_dir: Path, options: Options) -> dict[str, Any]:
    async with solo_victim(work_dir) as solo:
        stranger = await stranger_scenario(solo, options.stranger)
        forged = await forged_scenario(solo, options.forged)
        plaintext = await plaintext_scenario(solo)
        alive = await check_alive(solo)
    return {
        "stranger": stranger,
        "forged": forged,
        "plaintext": plaintext,
        "alive": alive,
        "stopped_cleanly": solo.victim.done.is_set() and solo.victim.error is None,
    }


async def round_scenarios(work_dir: Path, options: Options) -> dict[str, Any]:
    dirs = prepare_round_peers(Path(work_dir), 3, interval_s=fuzz.NEVER_S)
    async with running(dirs, live_neighbours=2, insiders=1) as cluster:
        replayed = await replayed_scenario(cluster, options.replayed, options.stale_wait_s)
        garbage = await garbage_scenario(cluster, options.garbage_rounds)
        crashed = dead(cluster)
    stopped = all(v.done.is_set() and v.error is None for v in cluster)
    return {
        "replayed": replayed,
        "garbage": garbage,
        "crashed": crashed,
        "stopped_cleanly": stopped,
    }


@dataclass
class Report:
    solo: dict[str, Any]
    rounds: dict[str, Any]
    flood: dict[str, Any]
    handler_error_kinds: dict[str, int]
    seconds: float
    strangers: dict[str, Any] = field(default_factory=dict)
    skew: dict[str, Any] = field(default_factory=dict)

    @property
    def crashes(self) -> int:
        unexpected = sum(n for k, n in self.handler_error_kinds.items() if k.startswith("unex"))
        return (
            unexpected
            + int(not self.solo["alive"])
            + int(not self.solo["stopped_cleanly"])
            + self.rounds["crashed"]
            + int(not self.rounds["stopped_cleanly"])
            + self.flood["crashed"]
            + int(not self.flood["stopped_cleanly"])
            + sum(
                int(r.get("crashed", 0)) + int(not r.get("stopped_cleanly", True))
                for r in self.strangers.values()
            )
            + int(self.skew.get("crashed", 0))
            + int(not self.skew.get("stopped_cleanly", True))
        )

    @property
    def replayed_accepted(self) -> int:
        replayed = self.rounds["replayed"]
        keys = ("accepted", "offline_accepted", "stale_accepted")
        return sum(int(replayed.get(k, 0)) for k in keys)

    @property
    def streams_served_to_stranger(self) -> int:
        stranger = self.solo["stranger"]
        return int(stranger["served"]) + int(stranger["bytes_back"] > 0)

    @property
    def breaches(self) -> int:
        """Attacks that got through (the exit status)."""
        solo = self.solo
        return (
            self.streams_served_to_stranger
            + solo["forged"]["accepted"]
            + self.replayed_accepted
            + int(solo["plaintext"]["connected"])
            + self.rounds["garbage"]["honest_backbones_changed"]
            + sum(r.get("round_after_flood_s") is None for r in self.strangers.values())
            + int(self.skew.get("invitations_naming_skewed", 0))
        )

    def as_json(self) -> dict[str, Any]:
        solo, rounds, flood = self.solo, self.rounds, self.flood
        return {
            "bench": "hostile",
            "streams_served_to_stranger": self.streams_served_to_stranger,
            "forged_accepted": solo["forged"]["accepted"],
            "replayed_accepted": self.replayed_accepted,
            "plaintext_connected": solo["plaintext"]["connected"],
            "garbage_round_outcomes": rounds["garbage"]["honest_outcomes"],
            "flood_rss_growth_mb": flood["rss_growth_mb"],
            "flood_rounds_completed": flood["rounds_completed"],
            "flood_streams_refused": flood["streams_refused"],
            "stranger_flood_handshakes": self.strangers.get("unlimited", {}).get("handshakes"),
            "stranger_flood_slots_left": self.strangers.get("unlimited", {}).get(
                "inbound_slots_after"
            ),
            "stranger_flood_round_after_s": self.strangers.get("unlimited", {}).get(
                "round_after_flood_s"
            ),
            "rate_limited_handshakes": self.strangers.get("limited", {}).get("handshakes"),
            "clock_skew_estimate_error_ms": self.skew.get("worst_estimate_error_ms"),
            "clock_skew_flagged_after_s": self.skew.get("flagged_after_s"),
            "clock_skew_invitations": self.skew.get("invitations_naming_skewed"),
            "crashes": self.crashes,
            "seconds": round(self.seconds, 1),
            "strangers": self.strangers,
            "skew": self.skew,
            "stranger": solo["stranger"],
            "forged": solo["forged"],
            "plaintext": solo["plaintext"],
            "replayed": rounds["replayed"],
            "garbage": rounds["garbage"],
            "flood": flood,
            "handler_error_kinds": self.handler_error_kinds,
        }


@contextlib.contextmanager
def watching_handler_errors() -> Any:
    """fuzz_bench's classifier of the exceptions the host's catch-all logs."""
    host_log = logging.getLogger("gossiplearn.host")
    watcher = fuzz.HandlerErrorLog()
    level = host_log.level
    host_log.addHandler(watcher)
    if host_log.getEffectiveLevel() > logging.DEBUG:
        host_log.setLevel(logging.DEBUG)
    try:
        yield watcher
    finally:
        host_log.removeHandler(watcher)
        host_log.setLevel(level)


def run_hostile(work_dir: Path, options: Options) -> Report:
    started = time.perf_counter()
    work_dir = Path(work_dir)
    with watching_handler_errors() as watcher:
        solo = trio.run(solo_scenarios, work_dir / "solo", options)
        rounds = trio.run(round_scenarios, work_dir / "rounds", options)
        flood = trio.run(flood_scenario, work_dir / "flood", options.flood_seconds, options.streams)
        strangers = {
            # Without the per-IP limit every handshake happens: the slots must come back.
            "unlimited": trio.run(
                stranger_flood_scenario, work_dir / "strangers", options.handshakes, 0
            ),
            # With the default limit: how many of the attempts get a handshake at all.
            "limited": trio.run(
                stranger_flood_scenario,
                work_dir / "strangers-limited",
                options.handshakes,
                FAILED_ADMISSIONS_PER_MINUTE,
            ),
        }
        skew = trio.run(
            clock_skew_scenario, work_dir / "skew", options.skew_s, options.skew_seconds
        )
    return Report(
        solo, rounds, flood, dict(watcher.kinds), time.perf_counter() - started, strangers, skew
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stranger", type=int, default=1000, help="streams of the stranger")
    parser.add_argument("--forged", type=int, default=1000)
    parser.add_argument("--replayed", type=int, default=1000)
    parser.add_argument(
        "--stale-wait", type=float, default=31.0, help="replay again after this (<0: skip)"
    )
    parser.add_argument("--garbage-rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=1000, help="attack streams at once")
    parser.add_argument("--flood-seconds", type=float, default=60.0)
    parser.add_argument("--handshakes", type=int, default=1000, help="stranger handshakes")
    parser.add_argument("--skew", type=float, default=60.0, help="a neighbour's clock skew (s)")
    parser.add_argument("--skew-seconds", type=float, default=30.0)
    parser.add_argument("--dir", type=Path, help="work directory (default: a temp dir)")
    args = parser.parse_args(argv)
    stderr = logging.StreamHandler()
    stderr.setLevel(logging.ERROR)
    logging.basicConfig(level=logging.ERROR, handlers=[stderr])
    # The attackers' own streams fail by the thousand, as they should, and libp2p logs each
    # (to stderr, whatever our handlers); it resets its logger when imported, so import first.
    import libp2p  # noqa: F401

    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    options = Options(
        stranger=args.stranger,
        forged=args.forged,
        replayed=args.replayed,
        stale_wait_s=None if args.stale_wait < 0 else args.stale_wait,
        garbage_rounds=args.garbage_rounds,
        streams=args.streams,
        flood_seconds=args.flood_seconds,
        handshakes=args.handshakes,
        skew_s=args.skew,
        skew_seconds=args.skew_seconds,
    )
    with tempfile.TemporaryDirectory(prefix="hostile-bench-") as temp:
        report = run_hostile(args.dir or Path(temp), options)
    print(json.dumps(report.as_json()), flush=True)
    return 1 if report.crashes or report.breaches else 0


if __name__ == "__main__":
    sys.exit(main())
