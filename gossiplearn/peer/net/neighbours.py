"""The neighbour table: who we know, how to reach them, whether they are alive, and whether
a round with them can work (their clock, their model).

Pure bookkeeping (times are passed in), so it is tested without a network. A neighbour is
*live* if it answered a ping within ``timeout_s``. Failures back off exponentially so a dead
or refusing peer is not hammered. A live neighbour is *invitable* unless its clock is off by
more than ``clock_tolerance_ms`` (our messages would be stale to it, and its to us) or it
runs a model whose backbone differs from ours (it could only decline).

Addresses: each neighbour has its candidate addresses, and the subset we were given by the
operator (bootstrap; always tried). The others come from signed peer records, which their
subject writes as it likes; at most ``MAX_RECORD_DIALS`` of them are ever dialed, those on an
IP the peer was seen on (a real connection) first, and once a dial to an address succeeded
that address alone is used until it fails.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

from gossiplearn.crypto.identity import peer_id_from_public_key

BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
#: Clock offsets kept per neighbour; their median is its offset (one delayed answer is noise).
CLOCK_SAMPLES = 5
#: Addresses from a peer record that are ever dialed (a record may list 8).
MAX_RECORD_DIALS = 2


def short_id(peer_id: str) -> str:
    """The abbreviation of a peer id used everywhere (logs, status): its last 8 characters."""
    return peer_id[-8:]


def is_circuit(address: str) -> bool:
    """A relayed address (``.../p2p/RELAY/p2p-circuit/p2p/PEER``)."""
    return "/p2p-circuit" in address


def circuit_relay(address: str) -> str | None:
    """The relay's peer id in a circuit address, or None."""
    head, sep, _ = address.partition("/p2p-circuit")
    if not sep:
        return None
    _, found, relay = head.rpartition("/p2p/")
    return relay if found and relay else None


def address_ip(address: str) -> str | None:
    """The IP (or host) of a multiaddr like /ip4/IP/tcp/PORT/..., or None."""
    parts = address.split("/")
    return (
        parts[2] if len(parts) > 2 and parts[1] in ("ip4", "ip6", "dns", "dns4", "dns6") else None
    )


@dataclass
class Neighbour:
    key: bytes
    addrs: list[str] = field(default_factory=list)
    source: str = "bootstrap"  # bootstrap, exchange, inbound
    rtt_ms: float | None = None
    last_seen: float | None = None
    failures: int = 0
    next_attempt: float = 0.0
    #: Addresses the operator configured (bootstrap): always dialed.
    configured: set[str] = field(default_factory=set)
    #: The address our last successful dial used; dialed alone while it works.
    confirmed: str | None = None
    #: IPs a real connection with this peer came from or went to.
    seen_ips: set[str] = field(default_factory=set)
    #: Recent estimates of (its clock - ours), in ms, from pings.
    clock_offsets: deque[float] = field(default_factory=lambda: deque(maxlen=CLOCK_SAMPLES))
    #: Its backbone schema hash (from pings), or None if it did not say.
    schema_hash: bytes | None = None
    #: Why dialing it fails, if we know better than "unreachable" (e.g. a wrong peer id).
    dial_problem: str | None = None

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.key)

    @property
    def clock_offset_ms(self) -> float | None:
        return statistics.median(self.clock_offsets) if self.clock_offsets else None

    def dial_plan(self) -> list[str]:
        """The addresses to dial now: the confirmed one if any, else the configured ones and
        at most MAX_RECORD_DIALS others, those on an IP seen on a real connection first, and
        at most MAX_RECORD_DIALS circuit addresses (through relays; the host dials those only
        if no direct address works)."""
        if self.confirmed is not None:
            return [self.confirmed]
        others = [a for a in self.addrs if a not in self.configured and not is_circuit(a)]
        others.sort(key=lambda a: address_ip(a) not in self.seen_ips)  # stable: seen IPs first
        circuits = [a for a in self.addrs if a not in self.configured and is_circuit(a)]
        return (
            [a for a in self.addrs if a in self.configured]
            + others[:MAX_RECORD_DIALS]
            + circuits[:MAX_RECORD_DIALS]
        )


class NeighbourTable:
    def __init__(
        self,
        me: bytes,
        max_neighbours: int,
        timeout_s: float,
        clock_tolerance_ms: float = float("inf"),
        schema_hash: bytes | None = None,
    ) -> None:
        self.me = me
        self.max_neighbours = max_neighbours
        self.timeout_s = timeout_s
        self.clock_tolerance_ms = clock_tolerance_ms
        #: Our own backbone schema hash (None: unknown, nobody is excluded for theirs).
        self.schema_hash = schema_hash
        self._by_key: dict[bytes, Neighbour] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def get(self, key: bytes) -> Neighbour | None:
        return self._by_key.get(key)

    def all(self) -> list[Neighbour]:
        return sorted(self._by_key.values(), key=lambda n: n.peer_id)

    def add(
        self,
        key: bytes,
        addrs: list[str] | None = None,
        source: str = "bootstrap",
        *,
        configured: bool = False,
    ) -> bool:
        """Track ``key`` (merging addresses); False if it is us or the table is full.
        ``configured``: the addresses come from the operator (always dialed)."""
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
            if configured:
                known.configured.add(addr)
        return True

    def replace_addrs(self, key: bytes, addrs: list[str]) -> None:
        """A newer peer record: its addresses replace the record-learned ones (the configured
        ones stay); a confirmed address no longer listed is forgotten."""
        neighbour = self._by_key.get(key)
        if neighbour is None:
            return
        neighbour.addrs = [a for a in neighbour.addrs if a in neighbour.configured]
        for addr in addrs:
            if addr not in neighbour.addrs:
                neighbour.addrs.append(addr)
        if neighbour.confirmed is not None and neighbour.confirmed not in neighbour.addrs:
            neighbour.confirmed = None

    def seen(
        self, key: bytes, now: float, rtt_ms: float | None = None, next_check_s: float = 0.0
    ) -> None:
        """``key`` answered (a ping, or any admitted stream); check it again after a pause."""
        neighbour = self._by_key.get(key)
        if neighbour is None:
            return
        neighbour.last_seen = now
        neighbour.failures = 0
        neighbour.dial_problem = None
        neighbour.next_attempt = max(neighbour.next_attempt, now + next_check_s)
        if rtt_ms is not None:
            neighbour.rtt_ms = rtt_ms

    def failed(self, key: bytes, now: float, problem: str | None = None) -> None:
        neighbour = self._by_key.get(key)
        if neighbour is None:
            return
        neighbour.failures += 1
        neighbour.dial_problem = problem
        neighbour.confirmed = None  # it may have moved: try its other addresses next time
        delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (neighbour.failures - 1))
        neighbour.next_attempt = now + delay

    def connected_via(self, key: bytes, ip: str | None, dialed: str | None = None) -> None:
        """A real connection with ``key``: from or to ``ip``; ``dialed``: the address of
        ours that reached it (it becomes the one we dial)."""
        neighbour = self._by_key.get(key)
        if neighbour is None:
            return
        if ip is not None:
            neighbour.seen_ips.add(ip)
        if dialed is not None and dialed in neighbour.addrs:
            neighbour.confirmed = dialed

    def clock(self, key: bytes, offset_ms: float) -> None:
        neighbour = self._by_key.get(key)
        if neighbour is not None:
            neighbour.clock_offsets.append(offset_ms)

    def schema(self, key: bytes, schema_hash: bytes | None) -> None:
        neighbour = self._by_key.get(key)
        if neighbour is not None:
            neighbour.schema_hash = schema_hash

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

    def clock_skewed(self, neighbour: Neighbour) -> bool:
        """Its clock is known to be off ours by more than the tolerance."""
        offset = neighbour.clock_offset_ms
        return offset is not None and abs(offset) > self.clock_tolerance_ms

    def schema_differs(self, neighbour: Neighbour) -> bool:
        """It told us its backbone schema, and it is not ours."""
        return (
            self.schema_hash is not None
            and neighbour.schema_hash is not None
            and neighbour.schema_hash != self.schema_hash
        )

    def invitable(self, now: float) -> list[Neighbour]:
        """Live neighbours a round can work with: clock within tolerance, same backbone."""
        return [
            n for n in self.live(now) if not self.clock_skewed(n) and not self.schema_differs(n)
        ]
