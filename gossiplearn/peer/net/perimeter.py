"""The peer's perimeter: what a stranger's inbound connection may hold before it is admitted.

- py-libp2p 0.8.1 gives every inbound connection one of 250 slots and returns it only when the
  whole swarm stops, even after the connection closed: 250 stranger handshakes would leave a
  peer unable to accept anyone until restart. We return the slot when the connection closes
  (:func:`guard_inbound`).
- Inbound connections are admitted in three steps, all before libp2p reads a byte of them:
  a connection whose remote IP cannot be read (reset before we asked) is closed; one whose IP
  has no admission token left is closed (:class:`FailedAdmissions`: each arrival takes a token
  of its IP, given back once the peer is admitted, so only failed admissions use them up); the
  rest are *pending* until admitted, at most ``MAX_PENDING_PER_IP`` per IP and
  ``MAX_PENDING`` in all (:class:`PendingAdmissions`: a new one over a cap closes the oldest
  pending one of the IP holding the most), and each must finish its handshake within
  ``HANDSHAKE_TIMEOUT_S``. So strangers hold at most 128 of libp2p's 250 inbound slots (64
  handshaking, 64 being closed), however many addresses they have, and an admitted peer's
  handshake gets a pending slot even when strangers fill the table.

host.py installs it on its swarm; the counters it keeps are the host's (``HostCounters``).
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from gossiplearn.peer.net.host import Host

log = logging.getLogger("gossiplearn.host")


#: Failed admissions (failed handshakes, peers not admitted) each remote IP may cause per
#: minute, with a burst of as many; past that its connections are closed before the handshake.
#: Every arrival takes a token, given back once the peer is admitted, so an IP's tokens go
#: only on connections that were not admitted (or are not yet). An honest peer fails admission
#: only when misconfigured (it is not on our allowlist), and then at the pace of its discovery
#: backoff (at most one dial a second at first, then far fewer), so 60 a minute never
#: throttles it; a stranger flooding handshakes gets one a second.
FAILED_ADMISSIONS_PER_MINUTE = 60

#: From an inbound connection's arrival to its finished handshake (multistream-select, Noise XX,
#: multistream-select again for yamux: ~3.5 round trips as the listener sees them, plus ~5 ms
#: of X25519/Ed25519 work). On loopback it takes ~10-50 ms here; at a 300 ms round trip ~1 s,
#: and one lost packet adds a retransmission timeout (~3 x the first RTT sample, 0.9 s): 3 s
#: lets that through (libp2p's own limit is 10 s: a silent stranger held a slot 3x longer).
#: Measured across the network lab (150 ms, 1% loss): no handshake timed out.
HANDSHAKE_TIMEOUT_S = 3.0
#: Inbound connections not admitted yet (handshaking, or refused and not closed yet), in all;
#: as many more may be being closed (displaced, timed out) until libp2p lets go of them.
#: py-libp2p 0.8.1 gives inbound connections 250 slots (max_connections 300 - min_connections
#: 50), each held until its connection is gone. Strangers hold at most 2 x 64 = 128 of them,
#: however many addresses they have; 250 - 128 = 122 stay for admitted peers' connections:
#: at most 2 per peer (a simultaneous dial both ways can leave two), so 61 admitted peers
#: connected in at once, ~4x the neighbours a peer keeps (discovery.max_neighbours 16).
#: When full, a new connection closes the oldest pending one of the IP holding the most: an
#: admitted peer's handshake (~50 ms) is then lost only to 64 newer arrivals within it, and
#: each arrival takes a token of its IP (60, then 1 a second): past their bursts, that needs
#: 64 / 0.05 s = 1,280 addresses.
MAX_PENDING = 64
#: Inbound connections not admitted yet from one IP. An honest IP has one in flight per peer
#: behind it dialing us (a peer dials once per attempt, at most one attempt a second); 8 lets
#: 8 peers behind one NAT dial at once. It keeps one address from taking all 64.
MAX_PENDING_PER_IP = 8

#: Why inbound connections were closed before admission (HostCounters.inbound_refused; metric
#: gossiplearn_inbound_refused): their IP was unknown, had no token, their pending slot went
#: to a newer connection (or none could be given: ``busy``), or their handshake took longer
#: than HANDSHAKE_TIMEOUT_S.
INBOUND_REFUSAL_REASONS = ("no_ip", "rate_limited", "busy", "evicted", "handshake_timeout")
#: After we close a connection's socket, how long libp2p may take to notice and return (it
#: does in milliseconds) before its handler is cancelled.
UNWIND_S = 2.0


class FailedAdmissions:
    """Per remote IP, a token bucket of admissions: ``per_minute`` tokens at most, refilled at
    ``per_minute`` a minute. Every inbound connection takes one on arrival (refused if less
    than one is left) and gives it back once its peer is admitted, so only failed admissions
    use them up. ``per_minute = 0`` disables the limit.

    Pure bookkeeping (times are passed in). At most ``max_tracked`` IPs are remembered; when
    full, IPs whose bucket is full again are forgotten first, then the least recently seen.
    """

    def __init__(self, per_minute: int, max_tracked: int = 4096) -> None:
        if per_minute < 0:
            raise ValueError("per_minute must be >= 0")
        self.per_minute = per_minute
        self.max_tracked = max_tracked
        self._buckets: dict[str, tuple[float, float]] = {}  # ip -> (tokens, as of)

    def _tokens(self, ip: str, now: float) -> float:
        tokens, since = self._buckets.get(ip, (float(self.per_minute), now))
        return min(float(self.per_minute), tokens + (now - since) * self.per_minute / 60.0)

    def allows(self, ip: str, now: float) -> bool:
        return self.per_minute == 0 or self._tokens(ip, now) >= 1.0

    def take(self, ip: str, now: float) -> bool:
        """Take a token of ``ip`` for a connection arriving now; False (none taken) if it has
        none left."""
        if self.per_minute == 0:
            return True
        tokens = self._tokens(ip, now)
        if tokens < 1.0:
            return False
        self._set(ip, tokens - 1.0, now)
        return True

    def refund(self, ip: str, now: float) -> None:
        """Give back the token of a connection whose peer was admitted."""
        if self.per_minute == 0 or ip not in self._buckets:
            return
        self._set(ip, min(float(self.per_minute), self._tokens(ip, now) + 1.0), now)

    def _set(self, ip: str, tokens: float, now: float) -> None:
        self._buckets.pop(ip, None)
        if len(self._buckets) >= self.max_tracked:
            self._forget(now)
        self._buckets[ip] = (tokens, now)

    def _forget(self, now: float) -> None:
        full = [ip for ip in self._buckets if self._tokens(ip, now) >= self.per_minute]
        for ip in full:
            del self._buckets[ip]
        while len(self._buckets) >= self.max_tracked:
            del self._buckets[next(iter(self._buckets))]  # the least recently updated

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(eq=False)
class Pending:
    """One inbound connection not admitted yet; ``close()`` asks its handler to close it."""

    ip: str
    close: Callable[[], None]
    order: int = 0
    closing: bool = False


class PendingAdmissions:
    """Inbound connections not admitted yet: at most ``per_ip`` of one IP and ``total`` in
    all waiting for their handshake, and at most ``total`` more being closed. Pure
    bookkeeping: :meth:`add` says which connection to close to stay within the caps.

    Over a cap, the newcomer is kept and an older one goes: the oldest of its own IP if that
    IP is at ``per_ip``, else the oldest of the IP holding the most (ties: the oldest of
    them). Honest handshakes take milliseconds, so the oldest pending connections are the
    silent ones; refusing newcomers instead would let strangers that keep the table full
    (64 connections renewed every HANDSHAKE_TIMEOUT_S: 22 arrivals a second) shut every
    admitted peer out. A connection told to close stays counted (``closing``) until libp2p has
    let go of it (milliseconds; 0.4 s on an overloaded event loop): only if ``total`` are
    closing already is the newcomer refused instead.
    """

    def __init__(self, per_ip: int, total: int) -> None:
        if per_ip < 1 or total < 1:
            raise ValueError("the pending caps must be >= 1")
        self.per_ip = per_ip
        self.total = total
        self._by_ip: dict[str, list[Pending]] = {}  # waiting for their handshake, oldest first
        self._count = 0
        self.closing = 0
        self._order = 0

    def __len__(self) -> int:
        """Connections waiting for their handshake (or refused and not closed yet)."""
        return self._count

    def of(self, ip: str) -> int:
        return len(self._by_ip.get(ip, ()))

    def add(self, entry: Pending) -> tuple[bool, Pending | None]:
        """Register ``entry``: (False, None) if it must be refused (``total`` connections
        are closing already), else (True, the connection it displaces, if any: the caller
        closes it)."""
        own = self._by_ip.get(entry.ip, [])
        displaced = None
        if len(own) >= self.per_ip:
            displaced = own[0]
        elif self._count >= self.total:
            displaced = min(
                (entries[0] for entries in self._by_ip.values()),
                key=lambda oldest: (-len(self._by_ip[oldest.ip]), oldest.order),
            )
        if displaced is not None:
            if self.closing >= self.total:
                return False, None
            self._unlist(displaced)
            displaced.closing = True
            self.closing += 1
        self._order += 1
        entry.order = self._order
        self._by_ip.setdefault(entry.ip, []).append(entry)
        self._count += 1
        return True, displaced

    def admitted(self, entry: Pending) -> None:
        """``entry``'s peer was admitted: it is no longer pending."""
        if not entry.closing:
            self._unlist(entry)

    def remove(self, entry: Pending) -> None:
        """``entry`` is gone (its handler returned); nothing if it was admitted."""
        if entry.closing:
            entry.closing = False
            self.closing -= 1
        else:
            self._unlist(entry)

    def _unlist(self, entry: Pending) -> None:
        entries = self._by_ip.get(entry.ip)
        if entries is None or entry not in entries:
            return
        entries.remove(entry)
        self._count -= 1
        if not entries:
            del self._by_ip[entry.ip]


class _InboundSlot:
    """What the wrapped upgrade tells the wrapped inbound handler (one per connection)."""

    def __init__(self) -> None:
        self.conn: object | None = None
        self.upgraded = trio.Event()
        #: Its pending slot went to a newer connection (PendingAdmissions): close it.
        self.displaced = trio.Event()
        #: The resource-manager scopes libp2p opened for it before its upgrade returned.
        self.scopes: list[object] = []


#: The slot of the inbound connection being handled by the current task.
_INBOUND: contextvars.ContextVar[_InboundSlot] = contextvars.ContextVar("gossiplearn_inbound")


def guard_inbound(swarm: object, host: Host) -> None:
    """Make py-libp2p 0.8.1's swarm return an inbound connection's slot when it closes, and
    admit inbound connections in three steps before their handshake (see the module
    docstring): a known IP, a token of that IP, a pending slot; and the handshake in time.

    The swarm's ``_handle_inbound_connection`` takes one of its 250 inbound slots (a
    ``trio.CapacityLimiter``), then ``_do_handle_inbound_connection`` upgrades the connection
    and waits for the *whole swarm* to stop before returning (it must not return earlier:
    trio closes a listener's socket when its handler returns). So the slot of a connection that
    closed is never given back: 250 stranger handshakes, refused by us after the handshake,
    and the peer accepts no one until restart. We wrap ``_do_handle_inbound_connection`` on
    this swarm instance: the wrapped upgrade reports the connection (through a context
    variable: the handler runs in the connection's own task), and the handler returns as soon
    as that connection is shutting down, which gives the slot back (the caller's ``finally``)
    and closes the socket. 0.8.1 is the newest release; if a later one renames these methods,
    we log a warning and leave it as it is.
    """
    original_handle = getattr(swarm, "_do_handle_inbound_connection", None)
    original_upgrade = getattr(swarm, "upgrade_inbound_raw_conn", None)
    if original_handle is None or original_upgrade is None:
        log.warning("unknown libp2p swarm: inbound connection slots are not returned on close")
        return
    _remember_scopes(swarm)

    async def upgrade(raw_conn: object, maddr: object) -> object:
        conn = await original_upgrade(raw_conn, maddr)
        slot = _INBOUND.get(None)
        # A relayed connection arriving over an inbound one inherits its context: not its slot.
        if slot is not None and not slot.upgraded.is_set():
            slot.conn = conn
            slot.upgraded.set()
        return conn

    def refuse(reason: str) -> None:
        host.counters.inbound_refused[reason] += 1
        if reason == "rate_limited":
            host.counters.rate_limited_connections += 1

    async def handle(read_write_closer: object, maddr: object, failure_event: object) -> None:
        ip = _remote_ip(read_write_closer)
        limiter = host.failed_admissions
        reason = _arrival_refusal(ip, limiter, time.monotonic())
        if reason is not None:
            refuse(reason)
            await _close_raw(read_write_closer)
            return
        slot = _InboundSlot()
        _INBOUND.set(slot)
        entry = Pending(ip or "?", slot.displaced.set)
        accepted, displaced = host.pending.add(entry)
        if not accepted:
            refuse("busy")
            await _close_raw(read_write_closer)
            return
        if displaced is not None:
            refuse("evicted")
            displaced.close()
        admitted = timed_out = False
        try:
            async with trio.open_nursery() as nursery:

                async def serve() -> None:
                    await original_handle(read_write_closer, maddr, failure_event)
                    nursery.cancel_scope.cancel()  # it returned by itself: the upgrade failed

                async def end_when_displaced_or_late() -> None:
                    # Ended by closing its socket, never by cancelling libp2p's upgrade: that
                    # skips part of its cleanup (py-libp2p 0.8.1 then keeps the connection's
                    # resource-manager slot: 1,000 of them and it refuses everyone). On a
                    # closed socket the handshake (or yamux) fails and cleans up by itself.
                    nonlocal timed_out
                    with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
                        await slot.displaced.wait()
                    if not slot.displaced.is_set():
                        if slot.upgraded.is_set():  # in time: now only a displacement ends it
                            await slot.displaced.wait()
                        else:
                            timed_out = True
                    await _close_raw(read_write_closer)
                    await trio.sleep(UNWIND_S)  # libp2p returns long before, cancelling this
                    nursery.cancel_scope.cancel()

                nursery.start_soon(serve)
                nursery.start_soon(end_when_displaced_or_late)
                await slot.upgraded.wait()
                from gossiplearn.peer.net.host import peer_key  # host imports this module

                key = peer_key(getattr(slot.conn, "peer_id", None))
                admitted = key is not None and key in host.admission
                if admitted:
                    host.pending.admitted(entry)
                    if ip is not None:
                        limiter.refund(ip, time.monotonic())
                else:  # refused: it stays pending (and displaceable) until it is closed
                    host.counters.failed_admissions += 1
                closing = getattr(slot.conn, "event_shutting_down", None)
                if closing is None:
                    await trio.sleep_forever()  # unknown connection type: libp2p's own barrier
                await closing.wait()
                nursery.cancel_scope.cancel()
        finally:
            host.pending.remove(entry)
            if not slot.upgraded.is_set():
                _release_scopes(slot)
        if timed_out:
            refuse("handshake_timeout")
        if not slot.upgraded.is_set():  # the handshake failed, timed out or was displaced
            host.counters.failed_admissions += 1

    swarm.upgrade_inbound_raw_conn = upgrade  # type: ignore[attr-defined]
    swarm._do_handle_inbound_connection = handle  # type: ignore[attr-defined]


def _remember_scopes(swarm: object) -> None:
    """Note, on the inbound connection's slot, each resource-manager scope libp2p opens for it
    before its upgrade returns (:func:`_release_scopes`)."""
    manager = getattr(swarm, "_resource_manager", None)
    original_open = getattr(manager, "open_connection", None)
    if original_open is None:
        return

    def open_connection(*args: object, **kwargs: object) -> object:
        scope = original_open(*args, **kwargs)
        slot = _INBOUND.get(None)
        if scope is not None and slot is not None and not slot.upgraded.is_set():
            slot.scopes.append(scope)
        return scope

    manager.open_connection = open_connection  # type: ignore[union-attr]


def _release_scopes(slot: _InboundSlot) -> None:
    """Close the scopes of a connection whose upgrade never returned. libp2p closes them in
    its own cleanup, unless its handler was cancelled first (it did not return within UNWIND_S
    of its socket being closed: 29 counts in one flood of silent strangers, on a machine at
    load 12-20): that cleanup then stops at its first await, and the scope's count stays in the
    resource manager for good (at 1,000 it refuses everyone). A scope's close is idempotent."""
    for scope in slot.scopes:
        with contextlib.suppress(Exception):
            scope.close()  # type: ignore[attr-defined]
    slot.scopes.clear()


def _arrival_refusal(ip: str | None, limiter: FailedAdmissions, now: float) -> str | None:
    """Why an inbound connection arriving now from ``ip`` is closed before its handshake, or
    None (a token of ``ip`` was taken: given back if its peer is admitted). A connection whose
    IP cannot be read (reset before we asked) has nothing to be charged to: it is refused."""
    if ip is None:
        return "no_ip"
    if not limiter.take(ip, now):
        return "rate_limited"
    return None


async def _close_raw(read_write_closer: object) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(Exception):
        await read_write_closer.close()  # type: ignore[attr-defined]


def _remote_ip(read_write_closer: object) -> str | None:
    try:
        address = read_write_closer.get_remote_address()  # type: ignore[attr-defined]
        return str(ipaddress.ip_address(address[0])) if address else None
    except Exception:  # not an IP connection
        return None
