"""Drives the sans-I/O round machine (:class:`~gossiplearn.protocol.round.Node`) over libp2p.

One task owns the machine: frames from round streams, "start a round", "here is a new
contribution" and "abort" all arrive through one channel and are fed to the machine in order,
in a worker thread (masking and encoding 10M-element vectors must not stall the event loop:
yamux resets a stream whose reader is stuck for 5 s). Stream handlers only read frames into
that channel, so they keep reading however busy the machine is. The machine's Send actions go
out as one new stream per peer and batch; its outcomes go to the daemon's callback.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import trio

from gossiplearn.peer.host import ROUND_PROTOCOL, Host
from gossiplearn.protocol.envelope import DEFAULT_LIMITS
from gossiplearn.protocol.round import Action, Node, RoundUsageError, Send, Wake

log = logging.getLogger("gossiplearn.engine")

INBOX_CAPACITY = 128
SEND_TIMEOUT_S = 30.0


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class _Frame:
    sender: bytes
    frame: bytes


@dataclass(frozen=True)
class _Start:
    candidates: tuple[bytes, ...]


@dataclass(frozen=True)
class _Contribution:
    vector: np.ndarray
    weight: int
    schema_hash: bytes


@dataclass(frozen=True)
class _Abort:
    reason: str
    done: trio.Event


class RoundEngine:
    def __init__(self, host: Host, node: Node, on_action: Callable[[Action], None]) -> None:
        self.host = host
        self.node = node
        self._on_action = on_action
        self._inbox_send, self._inbox = trio.open_memory_channel[object](INBOX_CAPACITY)
        self._nursery: trio.Nursery | None = None
        self.send_failures = 0

    # ---- inputs ----

    async def handle_stream(self, key: bytes, stream: object) -> None:
        """Round protocol handler: queue every frame the peer sends on this stream."""
        limit = DEFAULT_LIMITS.max_frame_bytes
        while (frame := await self.host.receive_frame(key, stream, limit)) is not None:
            await self._inbox_send.send(_Frame(key, frame))
        await stream.close()  # type: ignore[attr-defined]

    async def start_round(self, candidates: Sequence[bytes]) -> None:
        await self._inbox_send.send(_Start(tuple(candidates)))

    async def set_contribution(self, vector: np.ndarray, weight: int, schema_hash: bytes) -> None:
        await self._inbox_send.send(_Contribution(vector, weight, schema_hash))

    async def abort(self, reason: str, timeout_s: float = 2.0) -> None:
        """Abort the current round (ABORT sent to its members) and wait for it, bounded."""
        done = trio.Event()
        with trio.move_on_after(timeout_s):
            await self._inbox_send.send(_Abort(reason, done))
            await done.wait()

    # ---- the machine's task ----

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            while True:
                deadline = self.node.next_deadline()
                timeout = math.inf if deadline is None else max(0.0, (deadline - now_ms()) / 1000)
                command = None
                with trio.move_on_after(timeout):
                    command = await self._inbox.receive()
                if command is None:
                    actions = await self._call(self.node.tick, now_ms())
                else:
                    actions = await self._execute(command)
                self._dispatch(actions)

    async def _call(self, fn: Callable[..., Any], *args: object, **kwargs: object) -> Any:
        """Run a machine method in a worker thread (only this task ever touches the machine)."""
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    async def _execute(self, command: object) -> list[Action]:
        node = self.node
        if isinstance(command, _Frame):
            return await self._call(node.receive, command.frame, now_ms(), from_peer=command.sender)
        if isinstance(command, _Contribution):
            await self._call(
                node.set_contribution, command.vector, command.weight, command.schema_hash
            )
            return []
        if isinstance(command, _Start):
            if node.busy:
                return []
            try:
                return await self._call(node.start_round, command.candidates, now_ms())
            except RoundUsageError as exc:
                log.debug("not starting a round: %s", exc)
                return []
        if isinstance(command, _Abort):
            actions = node.abort(command.reason, now_ms())
            # Sent inline (not spawned) so a stopping daemon knows its ABORTs left.
            for key, frames in _by_recipient(actions).items():
                await self._send_batch(key, frames, timeout_s=1.0)
            self._dispatch([a for a in actions if not isinstance(a, Send)])
            command.done.set()
            return []
        raise TypeError(f"unknown engine command {command!r}")

    def _dispatch(self, actions: list[Action]) -> None:
        assert self._nursery is not None
        for key, frames in _by_recipient(actions).items():
            self._nursery.start_soon(self._send_batch, key, frames)
        for action in actions:
            # Wake needs no handling: run() asks the machine for its next deadline each turn.
            if not isinstance(action, Send | Wake):
                self._on_action(action)

    async def _send_batch(
        self, key: bytes, frames: list[bytes], timeout_s: float = SEND_TIMEOUT_S
    ) -> None:
        try:
            with trio.fail_after(timeout_s):
                stream = await self.host.open_stream(key, ROUND_PROTOCOL)
                try:
                    for frame in frames:
                        await self.host.send_frame(key, stream, frame)
                finally:
                    await stream.close()  # type: ignore[attr-defined]
        except Exception as exc:  # the peer is gone or refused: its round will time out
            self.send_failures += 1
            log.debug("sending %d frame(s) failed: %r", len(frames), exc)


def _by_recipient(actions: list[Action]) -> dict[bytes, list[bytes]]:
    batches: dict[bytes, list[bytes]] = {}
    for action in actions:
        if isinstance(action, Send):
            batches.setdefault(action.to, []).append(action.frame)
    return batches
