"""Hostile peers against live peer daemons, one scenario each, every one measured.

Real :class:`~gossiplearn.peer.daemon.Daemon` daemons run in one trio process, from
directories made by ``prepare_peers``, on 127.0.0.1; the attackers are libp2p hosts in the same
process, talking to them over real streams (the fuzzer's forge signs their envelopes).

- stranger: a peer nobody admits connects and opens streams spread over every protocol
  (round, peers, ping, status), a valid-looking frame on each. Figures: bytes that ever came
  back, streams the victim handed to a handler, its refusal counters; its neighbours, rounds
  and model must not change.
- forged: the admitted fuzzer sends envelopes in its own name whose signature is wrong (made
  by a stranger or by another admitted peer, or a valid one with a bit flipped): INVITEs that
  name the victim, and PARTs. Every one must be refused for "signature": none reaches the
  round machine's logic, the victim never answers nor joins a round.
- plaintext: a libp2p host offering only the plaintext security transport, with an identity
  the victim admits, dials the victim: the connection must fail, and no stream be served.
- replayed: three honest daemons run a real round; one of them, the recorder, then turns
  hostile and replays over its own connections (a replay can only come from there: an
  envelope's sender must be the connection's authenticated peer, and Noise protects the
  transport) frames to the other members: its own frames of the round, and frames the others
  sent it (signed by them). Right after the round (replay/sender_mismatch), optionally again
  after the 30 s freshness window (stale), and offline: a member's machine restarted with an
  empty replay table, fed the recorder's frames 31 s later (stale). 0 accepted.
- garbage: three honest daemons and a fourth whose machine (an Insider with the GarbageParts
  attack) sends validly signed, well-formed PART shards of random values. Rounds of three, by
  honest initiators taking turns, each with the next honest peer and the hostile one: the
  masks hide who sent the garbage, so every honest member aborts (the average is
  implausible, or a member that saw it first said so), strikes nobody for it (round v3:
  ``RoundAborted.blamed == ()``, the other members recorded as suspects), keeps its backbone,
  and group testing singles out the hostile peer, the one member of every such failure: each
  honest peer backs it off after its second spoiled round, and no honest peer is struck.

:func:`run_hostile` runs these with the floods (:mod:`~gossiplearn.testing.scenarios.floods`)
and a skewed clock (:mod:`~gossiplearn.testing.scenarios.skew`); its :class:`Report` is
benchmarks/hostile_bench.py's line. tests/peer/net/test_hostile.py runs them with small counts.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import multiaddr
import numpy as np
import trio

from gossiplearn.crypto.identity import Identity, load_key_file
from gossiplearn.peer.config import IDENTITY_FILE
from gossiplearn.peer.daemon import Daemon
from gossiplearn.peer.net.host import (
    PEERS_PROTOCOL,
    PING_PROTOCOL,
    ROUND_PROTOCOL,
    STATUS_PROTOCOL,
    Admission,
    Host,
)
from gossiplearn.peer.net.perimeter import FAILED_ADMISSIONS_PER_MINUTE
from gossiplearn.protocol import Invite, Part, split_shards
from gossiplearn.protocol.events import Action, MessageRefused, PeerSuspected, RoundAborted
from gossiplearn.protocol.node import Node
from gossiplearn.protocol.replay import DEFAULT_FRESHNESS_MS
from gossiplearn.testing.cluster import paused
from gossiplearn.testing.insider import GarbageParts, Insider
from gossiplearn.testing.scenarios import fuzz
from gossiplearn.testing.scenarios.floods import flood_scenario, stranger_flood_scenario
from gossiplearn.testing.scenarios.live import (
    LOOPBACK,
    NEVER_S,
    ActionLog,
    Victim,
    close_stream,
    dead,
    echo_ping,
    key_of,
    now_ms,
    prefixed,
    prepare_round_peers,
    running,
    watching_handler_errors,
)
from gossiplearn.testing.scenarios.live import (
    drain as live_drain,
)
from gossiplearn.testing.scenarios.skew import clock_skew_scenario

ROUND_TIMEOUT_S = 60.0  # a triggered round must have ended (any outcome) by then
DRAIN_TIMEOUT_S = 60.0
ATTEMPT_TIMEOUT_S = 10.0
STRANGER_BURST = 20  # streams the stranger opens at once on each of its connections
CONCURRENCY = 8  # attack streams in flight at once (stranger, forged, replayed)
BATCH = 50  # frames per stream (forged, replayed)
#: The honest daemons of the round scenarios (the recorder and two members for the replay;
#: the initiators taking turns with the garbage), and one more, the hostile member.
HONEST = 3


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

        def receive(frame: bytes, now_ms: int, *, from_peer: bytes | None = None) -> list[Action]:
            actions = original(frame, now_ms, from_peer=from_peer)
            refusals = [a for a in actions if isinstance(a, MessageRefused)]
            if refusals:
                self.refused[refusals[0].reason] += 1
            else:
                self.accepted += 1
                if self.keep:
                    self.kept.append((from_peer, frame))
            self.frames += 1
            return actions

        # The engine looks it up for each frame.
        node.receive = receive  # type: ignore[method-assign]

    def close(self) -> None:
        with contextlib.suppress(AttributeError):
            del self.peer.node.receive


def round_counts(peer: Daemon) -> tuple[int, int, int]:
    rounds = peer.rounds
    return rounds.completed, rounds.aborted, rounds.cancelled


def inbox_busy(victims: Iterable[Victim]) -> Callable[[], bool]:
    return lambda: any(v.busy() for v in victims)


async def drain(count: Callable[[], int], target: int, busy: Callable[[], bool]) -> None:
    """Until ``count()`` reaches ``target`` or stalls (fuzz_bench.drain), bounded."""
    with trio.move_on_after(DRAIN_TIMEOUT_S):
        await live_drain(count, target, busy)


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

    victim: Victim
    host: Host  # the admitted fuzzer, running
    forge: fuzz.Forge  # signing as the fuzzer
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
        host.handle(PING_PROTOCOL, lambda k, s: echo_ping(host, k, s))
        host.handle(PEERS_PROTOCOL, close_stream)
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
            return forge.envelope(forge.round, invite)
        if protocol == PING_PROTOCOL:
            return os.urandom(16)
        target = forge.peers if protocol == PEERS_PROTOCOL else forge.status
        return forge.envelope(target)

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
            return Part(os.urandom(32), 1, shard)  # a transcript of no round
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
        return forge.envelope(forge.round, body(i), signer=signer)

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


async def run_round(initiator: Victim, members: Sequence[Victim]) -> dict[bytes, str]:
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

    def ended(v: Victim) -> bool:
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


def capture_sends(victim: Victim) -> list[tuple[bytes, bytes]]:
    """Every (recipient, frame) the daemon's round engine sends from now on."""
    engine = victim.peer.engine
    original = engine._send_batch
    sent: list[tuple[bytes, bytes]] = []

    async def send_batch(key: bytes, frames: list[bytes], *args: Any, **kwargs: Any) -> None:
        sent.extend((key, frame) for frame in frames)
        await original(key, frames, *args, **kwargs)

    engine._send_batch = send_batch  # type: ignore[method-assign]
    return sent


def frame_ts(frame: bytes) -> int:
    return int(msgpack.unpackb(frame, raw=False)["ts"])


async def replayed_scenario(
    cluster: Sequence[Victim], count: int, stale_wait_s: float | None = None
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


async def garbage_scenario(cluster: Sequence[Victim], rounds: int) -> dict[str, Any]:
    """The last daemon turns hostile; ``rounds`` rounds of three, the honest ones taking turns
    to invite the next honest peer and the hostile one (see the module docstring). An
    initiator that singled the hostile peer out invites it no more: its turn is counted in
    ``not_invited`` and skipped."""
    *honest, hostile = cluster
    hostile_key = key_of(hostile)
    machine = hostile.peer.node
    assert isinstance(machine, Insider)
    machine.attack = GarbageParts()  # the same machine, from now on hostile
    logs = [ActionLog(v.peer) for v in honest]
    outcomes: Counter[str] = Counter()
    hostile_outcomes: Counter[str] = Counter()
    backbone_changed = not_invited = 0
    per_round: list[list[str]] = []
    for r in range(rounds):
        initiator, member = honest[r % len(honest)], honest[(r + 1) % len(honest)]
        if hostile_key in initiator.peer.engine.view.blocked:
            not_invited += 1
            per_round.append(["not_invited"])
            continue
        # The learning schedules are held still so that only the round could change a model
        # (after an aborted round a peer trains its next budget).
        async with paused([v.peer for v in honest]):
            digests = {key_of(v): v.peer.model.backbone_digest() for v in honest}
            result = await run_round(initiator, [member, hostile])
            for v in (initiator, member):
                outcomes[result[key_of(v)]] += 1
            backbone_changed += sum(
                v.peer.model.backbone_digest() != digests[key_of(v)] for v in honest
            )
        hostile_outcomes[result[key_of(hostile)]] += 1
        per_round.append(sorted(result[key_of(v)] for v in (initiator, member)))
    honest_keys = {key_of(v) for v in honest}
    aborts = [a for log in logs for a in log.of(RoundAborted)]
    singled = [s.peers for log in logs for s in log.of(PeerSuspected)]
    return {
        "rounds": rounds,
        "not_invited": not_invited,
        "honest_outcomes": dict(outcomes),
        "hostile_outcomes": dict(hostile_outcomes),
        "per_round": per_round,
        "honest_backbones_changed": backbone_changed,
        # Round v3: a failure nobody can prove strikes nobody; its suspects are the others.
        "honest_aborts": len(aborts),
        "blamed": sum(len(a.blamed) for a in aborts),
        "suspects_without_hostile": sum(hostile_key not in a.suspects for a in aborts),
        # Group testing: whom each honest peer singled out, and what it struck at the end.
        "singled_out_hostile": sum(peers == (hostile_key,) for peers in singled),
        "singled_out_other": sum(peers != (hostile_key,) for peers in singled),
        "spoiled_until_singled_out": [spoiled_until(log, hostile_key) for log in logs],
        "hostile_backed_off_by": sum(hostile_key in v.peer.engine.view.blocked for v in honest),
        "honest_backed_off": sum(
            len(honest_keys & set(v.peer.engine.view.blocked)) for v in honest
        ),
    }


def spoiled_until(log: ActionLog, peer: bytes) -> int | None:
    """Rounds this peer saw fail before it singled ``peer`` out (None: it never did)."""
    failed = 0
    for action in log.actions:
        if isinstance(action, RoundAborted):
            failed += 1
        elif isinstance(action, PeerSuspected) and action.peers == (peer,):
            return failed
    return None


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
        "stopped_cleanly": solo.victim.stopped_cleanly,
    }


async def round_scenarios(work_dir: Path, options: Options) -> dict[str, Any]:
    """Three honest daemons and an insider (honest until the garbage): the replay among the
    honest three, then the garbage rounds."""
    dirs = prepare_round_peers(Path(work_dir), HONEST + 1, interval_s=NEVER_S)
    async with running(dirs, live_neighbours=HONEST, insiders=1) as cluster:
        honest = cluster[:HONEST]
        replayed = await replayed_scenario(honest, options.replayed, options.stale_wait_s)
        garbage = await garbage_scenario(cluster, options.garbage_rounds)
        crashed = dead(cluster)
    stopped = all(v.stopped_cleanly for v in cluster)
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
    def garbage_breaches(self) -> int:
        """Garbage that changed an honest model, struck an honest peer, or was never traced to
        its sender (each honest peer that spoiled two rounds with it must single it out)."""
        garbage = self.rounds["garbage"]
        missed = sum(
            spoiled is None or spoiled > 2 for spoiled in garbage["spoiled_until_singled_out"]
        )
        return (
            garbage["honest_backbones_changed"]
            + garbage["blamed"]
            + garbage["singled_out_other"]
            + garbage["honest_backed_off"]
            + (missed if garbage["rounds"] >= HONEST else 0)
        )

    @property
    def breaches(self) -> int:
        """Attacks that got through (the exit status)."""
        solo = self.solo
        return (
            self.streams_served_to_stranger
            + solo["forged"]["accepted"]
            + self.replayed_accepted
            + int(solo["plaintext"]["connected"])
            + self.garbage_breaches
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
            "garbage_blamed": rounds["garbage"]["blamed"],
            "garbage_sender_backed_off_by": rounds["garbage"]["hostile_backed_off_by"],
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
