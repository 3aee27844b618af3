"""Floods against a live daemon: an admitted peer's round streams, and strangers' handshakes.

- :func:`flood_scenario`: three honest daemons doing rounds every ~1 s; an admitted attacker
  tries to keep ``streams`` round streams to the victim open at once (reopening any the
  victim resets), writing ~1 MiB garbage frames on each as fast as it can, for ``seconds``.
  Figures: RSS growth of the process (victim, its two honest neighbours and the attacker)
  over its level before the flood, rounds the victim completed meanwhile, streams it refused
  as "too_many_streams", and the most streams/frames of the attacker it ever held.
- :func:`stranger_flood_scenario`: ``handshakes`` stranger handshakes (8 strangers at once,
  each connecting and hanging up again and again) against a daemon that dials nobody, with
  its per-IP limit on failed admissions (0: none, so every handshake happens and py-libp2p's
  inbound slots must all come back); then two new admitted daemons start and must reach it
  (inbound) for it to complete a round.

tests/peer/net/test_hostile.py and test_strangers.py run them; benchmarks/hostile_bench.py
with bigger counts (through :func:`gossiplearn.testing.scenarios.hostile.run_hostile`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from gossiplearn.crypto.identity import Identity, load_key_file, public_key_from_peer_id
from gossiplearn.peer.config import IDENTITY_FILE, load_config, save_config
from gossiplearn.peer.daemon import Daemon
from gossiplearn.peer.net.bulk import make_header
from gossiplearn.peer.net.host import (
    MAX_STREAMS_PER_PEER,
    ROUND_PROTOCOL,
    Admission,
    Host,
    split_p2p_multiaddr,
)
from gossiplearn.testing.scenarios.live import (
    LOOPBACK,
    dead,
    key_of,
    prefixed,
    prepare_round_peers,
    rss_mb,
    running,
)

ROUND_TIMEOUT_S = 60.0  # honest rounds before the flood: the first one by then
ATTEMPT_TIMEOUT_S = 10.0
FLOOD_FRAME_BYTES = 1 << 20  # a full shard's worth of garbage: under the round frame limit
FLOOD_REOPEN_S = 0.2  # pause before an attack stream the victim refused is reopened
SAMPLE_S = 0.25
FLOOD_STRANGERS = 8  # stranger hosts handshaking at once
# A stranger's bound on one handshake. The victim's own handshake timeout (3 s, from its
# accept) is what a handshake is held to; this only ends a flood that hangs. It counts from
# the connect call, so it also covers the wait in the victim's listen backlog, which on a
# machine at load 14 passed 10 s for 7 of 1000 handshakes.
HANDSHAKE_ATTEMPT_TIMEOUT_S = 60.0


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
        rss_before = rss_mb()
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
                    samples["rss_mb"] = max(samples["rss_mb"], rss_mb())
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
                    await host.connect(address, HANDSHAKE_ATTEMPT_TIMEOUT_S)
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


# ---- bulk-channel starvation ----


@dataclass
class Stalling:
    """Connections to the victim's bulk port whose header names its round in progress and a
    real member, then silence (renewed when the victim closes them)."""

    opened: int = 0
    answered: int = 0  # connections that got any byte back


async def stall(victim: Any, members: list[bytes], per_member: int, stats: Stalling) -> None:
    """Keep ``per_member`` stalled connections per member in ``members`` open to ``victim``'s
    bulk port (bulk-channel starvation, round v3 class 4), until cancelled."""
    assert victim.engine.bulk is not None and victim.engine.bulk.port is not None
    address = ("127.0.0.1", victim.engine.bulk.port)
    me = bytes(victim.identity.public_key)  # a Daemon (testing.cluster), not a Victim

    async def one(member: bytes) -> None:
        while True:
            group = victim.engine.view.current_group
            if group is None:
                await victim.engine._view_changed.wait()
                continue
            try:
                stream = await trio.open_tcp_stream(*address)
            except OSError:
                await trio.sleep(0.01)
                continue
            stats.opened += 1
            async with stream:
                with contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(make_header(group, member, me))
                    if await stream.receive_some(10):
                        stats.answered += 1

    async with trio.open_nursery() as nursery:
        for member in members:
            for _ in range(per_member):
                nursery.start_soon(one, member)
