"""Real peer daemons (libp2p hosts and all) in one trio process, for live tests.

:func:`prepare` makes the peer directories (identities, documented configs admitting each
other, digits shards); :func:`running` runs a :class:`~gossiplearn.peer.daemon.Daemon` for each
until its block ends, yielding them once every one is serving, has trained and sees its
neighbours live. A daemon may run an adversary's round machine (``node_factories``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from gossiplearn.peer.config import load_config, save_config
from gossiplearn.peer.daemon import Daemon
from gossiplearn.protocol.node import Node
from gossiplearn.sim.config import SimConfig
from gossiplearn.sim.daemons import prepare_peers

#: A round interval no test waits for: the daemon trains once and never invites by itself.
NEVER_S = 1e6
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def prepare(
    work_dir: Path,
    peers: int,
    *,
    interval_s: float = NEVER_S,
    group_size: int = 4,
    **round_options: Any,
) -> list[Path]:
    """``peers`` daemon directories admitting each other; ``round_options`` set keys of
    their ``[round]`` section (e.g. ``max_weight``)."""
    config = SimConfig(peers=peers, mode="inproc", interval_s=interval_s, group_size=group_size)
    dirs = prepare_peers(Path(work_dir), config)
    for directory in dirs:
        peer_config = load_config(directory)
        for key, value in round_options.items():
            setattr(peer_config.round, key, value)
        save_config(directory, peer_config)
    return dirs


def key_of(peer: Daemon) -> bytes:
    return bytes(peer.identity.public_key)


def live_neighbours(peer: Daemon) -> int:
    return len(peer.table.live(time.monotonic())) if peer.ready else 0


@asynccontextmanager
async def running(
    dirs: Sequence[Path],
    *,
    node_factories: Mapping[int, Callable[..., Node]] | None = None,
    live: int | None = None,
) -> AsyncIterator[list[Daemon]]:
    """Run a daemon for each directory until the block ends (then stop them all, each
    checkpointing as on SIGTERM). Yields once every daemon serves, has its first contribution
    and sees ``live`` live neighbours (default: all the others). Raises RuntimeError if one
    ends early, trio.TooSlowError if they are not ready within READY_TIMEOUT_S."""
    factories = node_factories or {}
    peers = [Daemon(d, node_factory=factories.get(i, Node)) for i, d in enumerate(dirs)]
    wanted = len(dirs) - 1 if live is None else live
    stop = trio.Event()
    ended: list[int] = []

    async def run(i: int, peer: Daemon) -> None:
        try:
            await peer.run(stop)
        finally:
            ended.append(i)

    async with trio.open_nursery() as nursery:
        for i, peer in enumerate(peers):
            nursery.start_soon(run, i, peer)
        try:
            with trio.fail_after(READY_TIMEOUT_S):
                while not all(
                    p.ready and p.engine.view.contribution_fresh and live_neighbours(p) >= wanted
                    for p in peers
                ):
                    if ended:
                        raise RuntimeError(f"daemon(s) {ended} ended before the cluster was ready")
                    await trio.sleep(0.05)
            yield peers
        finally:
            stop.set()
            with trio.move_on_after(STOP_TIMEOUT_S):
                while len(ended) < len(peers):
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def paused(daemons: Sequence[Daemon]) -> AsyncIterator[None]:
    """Every daemon's learning schedule held still inside the block (no training, applying or
    checkpointing; see BuiltinLearning.paused): for comparing models, or reading counts that
    must agree, while the schedules run."""
    async with AsyncExitStack() as stack:
        for daemon in daemons:
            await stack.enter_async_context(daemon.builtin.paused())
        yield
