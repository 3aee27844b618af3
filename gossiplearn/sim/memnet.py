"""A deterministic in-memory network for the sans-I/O protocol machines.

Routes the :class:`~gossiplearn.protocol.node.Node` actions between nodes on a virtual clock,
with configurable latency, jitter (which reorders), loss, duplication and peer death. Given the
same seed and inputs it replays exactly, so a fault found once is found every time. Tests use
it for fault injection; the large-N simulation uses it to run a thousand peers in one process.

Time is virtual: a 60 s round deadline costs nothing to wait for. CPU work (masking, encoding,
signatures) is real.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gossiplearn.protocol.envelope import verify_envelope
from gossiplearn.protocol.events import (
    Action,
    EquivocationDetected,
    MessageRefused,
    PeerSuspected,
    RoundAborted,
    RoundCancelled,
    RoundFinished,
    Send,
    Wake,
)
from gossiplearn.protocol.node import Node

Outcome = RoundFinished | RoundAborted | RoundCancelled

#: A fault-injection hook: given (sender key, the Send), return the frames to deliver instead
#: (an empty list drops it, a changed frame tampers with it), or None to deliver it unchanged.
Interceptor = Callable[[bytes, Send], "list[bytes] | None"]


@dataclass(frozen=True)
class Delivery:
    """One frame on the wire, as recorded by the network."""

    at_ms: float
    sender: bytes
    recipient: bytes
    kind: str
    frame: bytes


class MemoryNetwork:
    """Nodes keyed by public key, a virtual clock, and a priority queue of pending events."""

    def __init__(
        self,
        *,
        seed: int = 0,
        latency_ms: float = 5.0,
        jitter_ms: float = 0.0,
        loss: float = 0.0,
        duplicate: float = 0.0,
        start_ms: int = 1_700_000_000_000,
        record: bool = False,
        report_unreachable: bool = False,
    ) -> None:
        if not (0 <= loss < 1 and 0 <= duplicate < 1 and latency_ms >= 0 and jitter_ms >= 0):
            raise ValueError("need 0 <= loss, duplicate < 1 and non-negative latency, jitter")
        self.now_ms: float = start_ms
        self.latency_ms = latency_ms
        self.jitter_ms = jitter_ms
        self.loss = loss
        self.duplicate = duplicate
        self.nodes: dict[bytes, Node] = {}
        self.dead: set[bytes] = set()
        self.outcomes: dict[bytes, list[Outcome]] = defaultdict(list)
        self.refused: dict[bytes, Counter[str]] = defaultdict(Counter)
        #: Equivocation proofs each node produced (EquivocationDetected actions).
        self.proofs: dict[bytes, list[EquivocationDetected]] = defaultdict(list)
        #: What group testing singled out at each node (PeerSuspected actions).
        self.suspected: dict[bytes, list[PeerSuspected]] = defaultdict(list)
        self.bytes_sent: Counter[bytes] = Counter()
        self.bytes_received: Counter[bytes] = Counter()
        self.deliveries: list[Delivery] = []  # every frame sent, when record=True
        self.intercept: Interceptor | None = None
        self._record = record
        #: Like a real transport (a refused dial): a frame for a dead peer is reported back to
        #: its sender, one latency later, through ``Node.peer_unreachable``.
        self.report_unreachable = report_unreachable
        self._rng = random.Random(seed)
        self._queue: list[tuple[float, int, str, tuple]] = []
        self._order = 0  # tie-breaker: equal times run in scheduling order

    # ---- set-up ----

    def add(self, node: Node) -> Node:
        self.nodes[node.public_key] = node
        return node

    def kill(self, key: bytes, at_ms: float | None = None) -> None:
        """The peer dies (now, or at ``at_ms``): it stops receiving, sending and ticking."""
        if at_ms is None or at_ms <= self.now_ms:
            self.dead.add(key)
        else:
            self._schedule(at_ms, "kill", (key,))

    # ---- driving ----

    def start_round(self, key: bytes, candidates: Iterable[bytes] | None = None) -> None:
        """Let ``key`` initiate a round with ``candidates`` (default: every other live node)."""
        pool = [k for k in (candidates or self.nodes) if k != key and k not in self.dead]
        node = self.nodes[key]
        self._apply(key, node.start_round(pool, int(self.now_ms)))

    def run(self, until_ms: float | None = None, max_events: int = 10_000_000) -> int:
        """Process events in time order until none is left (or ``until_ms``); returns the count."""
        processed = 0
        while self._queue and processed < max_events:
            at, _, kind, payload = self._queue[0]
            if until_ms is not None and at > until_ms:
                break
            heapq.heappop(self._queue)
            self.now_ms = max(self.now_ms, at)
            processed += 1
            if kind == "deliver":
                sender, recipient, frame = payload
                if recipient in self.dead or recipient not in self.nodes:
                    if self.report_unreachable and recipient in self.dead:
                        group = verify_envelope(frame).group
                        back = self.now_ms + self.latency_ms
                        self._schedule(back, "unreachable", (sender, recipient, group))
                    continue
                self.bytes_received[recipient] += len(frame)
                node = self.nodes[recipient]
                self._apply(recipient, node.receive(frame, int(self.now_ms), from_peer=sender))
            elif kind == "tick":
                (key,) = payload
                if key not in self.dead:
                    self._apply(key, self.nodes[key].tick(int(self.now_ms)))
            elif kind == "kill":
                self.dead.add(payload[0])
            elif kind == "unreachable":
                sender, recipient, group = payload
                if sender not in self.dead:
                    node = self.nodes[sender]
                    self._apply(sender, node.peer_unreachable(recipient, group, int(self.now_ms)))
        if until_ms is not None and (not self._queue or self._queue[0][0] > until_ms):
            self.now_ms = max(self.now_ms, until_ms)
        return processed

    @property
    def idle(self) -> bool:
        return not self._queue

    # ---- internals ----

    def _schedule(self, at_ms: float, kind: str, payload: tuple) -> None:
        self._order += 1
        heapq.heappush(self._queue, (at_ms, self._order, kind, payload))

    def _apply(self, key: bytes, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(key, action)
            elif isinstance(action, Wake):
                self._schedule(max(action.at_ms, self.now_ms), "tick", (key,))
            elif isinstance(action, MessageRefused):
                self.refused[key][action.reason] += 1
            elif isinstance(action, EquivocationDetected):
                self.proofs[key].append(action)
            elif isinstance(action, PeerSuspected):
                self.suspected[key].append(action)
            else:
                self.outcomes[key].append(action)

    def _send(self, sender: bytes, send: Send) -> None:
        if sender in self.dead:
            return
        frames = [send.frame]
        if self.intercept is not None:
            replaced = self.intercept(sender, send)
            if replaced is not None:
                frames = replaced
        for frame in frames:
            self.bytes_sent[sender] += len(frame)
            if self._record:
                self.deliveries.append(Delivery(self.now_ms, sender, send.to, send.kind, frame))
            if self.loss and self._rng.random() < self.loss:
                continue
            copies = 2 if self.duplicate and self._rng.random() < self.duplicate else 1
            for _ in range(copies):
                delay = self.latency_ms + self._rng.uniform(0, self.jitter_ms)
                self._schedule(self.now_ms + delay, "deliver", (sender, send.to, frame))
