"""The neighbour table: who we know, how to reach them, whether they are alive.

Pure bookkeeping (times are passed in), so it is tested without a network. A neighbour is
*live* if it answered a ping within ``timeout_s``. Failures back off exponentially so a dead
or refusing peer is not hammered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gossiplearn.crypto.identity import peer_id_from_public_key

BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0


@dataclass
class Neighbour:
    key: bytes
    addrs: list[str] = field(default_factory=list)
    source: str = "bootstrap"  # bootstrap, exchange, inbound
    rtt_ms: float | None = None
    last_seen: float | None = None
    failures: int = 0
    next_attempt: float = 0.0

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.key)


class NeighbourTable:
    def __init__(self, me: bytes, max_neighbours: int, timeout_s: float) -> None:
        self.me = me
        self.max_neighbours = max_neighbours
        self.timeout_s = timeout_s
        self._by_key: dict[bytes, Neighbour] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def get(self, key: bytes) -> Neighbour | None:
        return self._by_key.get(key)

    def all(self) -> list[Neighbour]:
        return sorted(self._by_key.values(), key=lambda n: n.peer_id)

    def add(self, key: bytes, addrs: list[str] | None = None, source: str = "bootstrap") -> bool:
        """Track ``key`` (merging addresses); False if it is us or the table is full."""
        if key == self.me:
            return False
        known = self._by_key.get(key)
        if known is None:
            if len(self._by_key) >= self.max_neighbours:
                return False
            known = self._by_key[key] = Neighbour(key, source=source)
        for addr in addrs or []:
            if addr not in known.addrs:
                known.addrs.append(addr)
        return True

    def seen(
        self, key: bytes, now: float, rtt_ms: float | None = None, next_check_s: float = 0.0
    ) -> None:
        """``key`` answered (a ping, or any admitted stream); check it again after a pause."""
        neighbour = self._by_key.get(key)
        if neighbour is None:
            return
        neighbour.last_seen = now
        neighbour.failures = 0
        neighbour.next_attempt = max(neighbour.next_attempt, now + next_check_s)
        if rtt_ms is not None:
            neighbour.rtt_ms = rtt_ms

    def failed(self, key: bytes, now: float) -> None:
        neighbour = self._by_key.get(key)
        if neighbour is None:
            return
        neighbour.failures += 1
        delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (neighbour.failures - 1))
        neighbour.next_attempt = now + delay

    def due(self, now: float) -> list[Neighbour]:
        """Neighbours whose next ping (or reconnection attempt) is due."""
        return [n for n in self.all() if n.next_attempt <= now]

    def is_live(self, neighbour: Neighbour, now: float) -> bool:
        """Answered within the timeout and not failed since: a peer that has just died stops
        being invited at its first failed ping, not ``timeout_s`` later."""
        return (
            neighbour.last_seen is not None
            and now - neighbour.last_seen <= self.timeout_s
            and neighbour.failures == 0
        )

    def live(self, now: float) -> list[Neighbour]:
        return [n for n in self.all() if self.is_live(n, now)]
