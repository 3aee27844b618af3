"""Real peer daemons in one trio process, watched: what the fuzz and hostile scenarios share.

A :class:`Victim` runs one :class:`~gossiplearn.peer.daemon.Daemon` (``Daemon.run(stop)``) and
reports instead of raising if it dies; :func:`running` runs several until its block ends.
:class:`HandlerErrorLog` classifies what the host's catch-all logs (a framing or stream error is
a refusal, anything else a handler crash), :class:`ActionLog` keeps what a daemon's round
machine told its runtime (round outcomes, peers singled out).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from gossiplearn.peer.daemon import Daemon
from gossiplearn.peer.net.framing import FramingError
from gossiplearn.peer.net.host import Host
from gossiplearn.protocol.events import Action
from gossiplearn.protocol.node import Node
from gossiplearn.sim.config import SimConfig
from gossiplearn.sim.daemons import prepare_peers
from gossiplearn.testing.insider import Insider

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
#: A round interval nobody reaches: such a daemon never invites, so only the attacker talks.
NEVER_S = 1e9
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0
DRAIN_STALL_S = 3.0  # a count that stopped moving for this long has drained
HEADER_BYTES = 4
#: Reasons the host counts for a broken stream (not a decoded frame).
STREAM_REASONS = frozenset({"frame_too_large", "frame_truncated", "stream_error"})


def now_ms() -> int:
    return int(time.time() * 1000)


def prefixed(frame: bytes) -> bytes:
    return len(frame).to_bytes(HEADER_BYTES, "big") + frame


def rss_mb() -> float:
    """Current resident set size of this process (Linux; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


# ---- the host's handler errors -------------------------------------------------------------


def classify_handler_error(exc: object) -> str:
    """A framing error or a libp2p stream error is a refusal; anything else, a handler crash."""
    if isinstance(exc, FramingError):
        return f"framing:{exc.reason}"
    if type(exc).__module__.startswith("libp2p"):
        return f"stream:{type(exc).__name__}"
    return f"unexpected:{type(exc).__name__}"


class HandlerErrorLog(logging.Handler):
    """Classifies the exceptions the host's catch-all logs ("handler %s failed for %s: %r")."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.kinds: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("handler ") and isinstance(record.args, tuple):
            self.kinds[classify_handler_error(record.args[-1])] += 1

    @property
    def unexpected(self) -> int:
        return sum(n for kind, n in self.kinds.items() if kind.startswith("unexpected"))


@contextlib.contextmanager
def watching_handler_errors() -> Iterator[HandlerErrorLog]:
    """A :class:`HandlerErrorLog` on the host's logger (its debug lines on) inside the block."""
    host_log = logging.getLogger("gossiplearn.host")
    watcher = HandlerErrorLog()
    level = host_log.level
    host_log.addHandler(watcher)
    if host_log.getEffectiveLevel() > logging.DEBUG:
        host_log.setLevel(logging.DEBUG)
    try:
        yield watcher
    finally:
        host_log.removeHandler(watcher)
        host_log.setLevel(level)


# ---- daemons -------------------------------------------------------------------------------


class Victim:
    """A daemon's run task, and the counters an attack is judged by."""

    def __init__(self, directory: Path, node_factory: Callable[..., Node] = Node) -> None:
        self.peer = Daemon(directory, node_factory=node_factory)
        self.stop, self.done = trio.Event(), trio.Event()
        self.error: str | None = None

    async def run(self) -> None:
        try:
            await self.peer.run(self.stop)
        except Exception as exc:  # the figure these scenarios exist for: report, never raise
            self.error = repr(exc)
        finally:
            self.done.set()

    @property
    def trained(self) -> bool:
        """Serving, with its first local training done."""
        peer = self.peer
        return peer.ready and peer.node._contribution is not None

    def rejected(self) -> int:
        """Refused frames that reached the decoder (broken streams are counted apart)."""
        return sum(n for r, n in self.peer.rejected.items() if r not in STREAM_REASONS)

    def handler_errors(self, protocol: str | None = None) -> int:
        errors = self.peer.host.counters.handler_errors
        return errors[protocol] if protocol else sum(errors.values())

    def busy(self) -> bool:
        """Frames are queued for the round machine (so counts are still to come)."""
        return self.peer.engine._inbox.statistics().current_buffer_used > 0

    @property
    def stopped_cleanly(self) -> bool:
        return self.done.is_set() and self.error is None

    async def stopped_within(self, timeout_s: float) -> float | None:
        """Stop it; the seconds it took, or None if it did not stop in ``timeout_s``."""
        self.stop.set()
        began = time.perf_counter()
        with trio.move_on_after(timeout_s):
            await self.done.wait()
        return time.perf_counter() - began if self.done.is_set() else None


def prepare_round_peers(work_dir: Path, peers: int, interval_s: float) -> list[Path]:
    """``peers`` daemon directories admitting each other, inviting every ~``interval_s``."""
    return prepare_peers(work_dir, SimConfig(peers=peers, mode="inproc", interval_s=interval_s))


@asynccontextmanager
async def running(
    dirs: Sequence[Path], live_neighbours: int = 0, insiders: int = 0
) -> AsyncIterator[list[Victim]]:
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
                    died = [v.error for v in victims if v.done.is_set()]
                    if died:
                        raise RuntimeError(f"a daemon did not start: {died}")
                    await trio.sleep(0.05)
            yield victims
        finally:
            for victim in victims:
                victim.stop.set()
            with trio.move_on_after(STOP_TIMEOUT_S):
                for victim in victims:
                    await victim.done.wait()
            nursery.cancel_scope.cancel()


def live(victim: Victim) -> int:
    peer = victim.peer
    return len(peer.table.live(time.monotonic())) if peer.ready else 0


def dead(victims: Iterable[Victim]) -> int:
    """Daemons whose run task ended (crashed) while they should be running."""
    return sum(v.done.is_set() or v.error is not None for v in victims)


def key_of(victim: Victim) -> bytes:
    return bytes(victim.peer.identity.public_key)


class ActionLog:
    """What a daemon's round machine tells its runtime from now on (outcomes, peers singled
    out, refusals: every action but sends and wake-ups), kept in order."""

    def __init__(self, peer: Daemon) -> None:
        self.actions: list[Action] = []
        engine = peer.engine
        original = engine._on_action

        def on_action(action: Action) -> None:
            self.actions.append(action)
            original(action)

        engine._on_action = on_action  # the engine looks it up for each action

    def of(self, kind: type[Any]) -> list[Any]:
        return [a for a in self.actions if isinstance(a, kind)]


# ---- streams -------------------------------------------------------------------------------


async def drain(count: Callable[[], int], target: int, busy: Callable[[], bool]) -> None:
    """Wait until ``count()`` reaches ``target``, or has not moved for DRAIN_STALL_S while
    ``busy()`` was false (some messages are never counted: that is what we measure)."""
    last, since = count(), trio.current_time()
    while last < target and trio.current_time() - since < DRAIN_STALL_S:
        await trio.sleep(0.05)
        if count() != last or busy():
            last, since = count(), trio.current_time()


async def echo_ping(host: Host, key: bytes, stream: Any) -> None:
    """Answer a ping like a peer (an echo)."""
    nonce = await host.receive_frame(key, stream, 16)
    if nonce is not None:
        await host.send_frame(key, stream, nonce)
    await stream.close()


async def close_stream(key: bytes, stream: Any) -> None:
    await stream.close()
