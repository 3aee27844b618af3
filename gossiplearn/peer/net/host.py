"""Our wrapper around a py-libp2p host: the traps of py-libp2p 0.8.1 that we know of, each
handled here.

- Noise is the only security transport (default hosts also accept plaintext peers); yamux.
- The 250 ms "happy eyeballs" wait on every connect is switched off.
- Admission: connections and streams from peers not admitted are refused before any payload
  is read, and counted; refused connections are closed. libp2p's own protocols (identify,
  identify push, ping) are served to admitted peers only: a stranger gets no agent string,
  listen addresses, protocol list or signed peer record.
- py-libp2p 0.8.1 gives every inbound connection one of 250 slots and returns it only when the
  whole swarm stops, even after the connection closed: 250 stranger handshakes would leave a
  peer unable to accept anyone until restart. We return the slot when the connection closes
  (``_return_inbound_slots``).
- Inbound connections are admitted in three steps, all before libp2p reads a byte of them:
  a connection whose remote IP cannot be read (reset before we asked) is closed; one whose IP
  has no admission token left is closed (``FailedAdmissions``: each arrival takes a token of
  its IP, given back once the peer is admitted, so only failed admissions use them up); the
  rest are *pending* until admitted, at most ``MAX_PENDING_PER_IP`` per IP and
  ``MAX_PENDING`` in all (``PendingAdmissions``: a new one over a cap closes the oldest
  pending one of the IP holding the most), and each must finish its handshake within
  ``HANDSHAKE_TIMEOUT_S``. So strangers hold at most 128 of libp2p's 250 inbound slots (64
  handshaking, 64 being closed), however many addresses they have, and an admitted peer's
  handshake gets a pending slot even when strangers fill the table.
- Listening: every configured address must really be listening (libp2p only logs a failure
  and keeps going without a listener), or ``run()`` raises :class:`ListenError`.
- An admitted peer may have at most ``max_streams_per_peer`` inbound streams in its handlers
  at once (all protocols together); one more is reset before any payload is read, and counted
  as "too_many_streams". Each handled stream can pin a frame (~1 MiB) and yamux's buffers, so
  without a cap one peer opening 1,000 streams could pin gigabytes.
- Every stream handler runs inside a catch-all that logs, counts and resets the stream: an
  exception escaping a handler would otherwise kill the whole host.
- Frames are length-prefixed with the size limit checked before allocating (framing.py).
- ``run()`` always ends with ``host.close()`` (leaving ``host.run()`` alone leaks sockets).
- Addresses: what the peer tells others to dial (:meth:`Host.addrs`) is ``peer.announce`` if
  set (a public IP, a forwarded port, a DNS name), else its listen addresses; a peer that
  reserves on relays and announces nothing advertises only its circuit addresses (it cannot be
  dialed directly). Circuit addresses (``.../p2p/RELAY/p2p-circuit/p2p/ID``) are dialed
  through the relay (relay.py) when a peer has no connection and no direct address works;
  :meth:`Host.reached` says how each peer is connected now (direct, relayed).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import ipaddress
import logging
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import multiaddr
import trio

from gossiplearn.crypto.identity import Identity, IdentityError, public_key_from_peer_id
from gossiplearn.peer.net.framing import HEADER_BYTES, FramingError, read_frame, write_frame

if TYPE_CHECKING:
    from gossiplearn.peer.net.relay import Relaying

log = logging.getLogger("gossiplearn.host")

ROUND_PROTOCOL = "/gossiplearn/round/1.0.0"
PEERS_PROTOCOL = "/gossiplearn/peers/1.0.0"
PING_PROTOCOL = "/gossiplearn/ping/1.0.0"
STATUS_PROTOCOL = "/gossiplearn/status/1.0.0"

StreamHandler = Callable[[bytes, object], Awaitable[None]]

#: Inbound streams one peer may have in our handlers at once, all protocols together. An
#: honest peer needs far fewer: its engine opens one round stream per batch of frames for us,
#: and one round gives us at most ~6 batches from any one member (INVITE or ACCEPT/BUSY, ROSTER
#: with its WEIGHT_SHARE, PARTs, REDUCEDs, ABORT or CANCEL), each stream closed once written;
#: discovery adds at most one PING and one PEERS stream in flight per neighbour, and a status
#: request one more. That is ~9 even if a round's streams all wait on us at once; 32 leaves
#: more than 3x margin (say, for a new round's INVITE arriving while an old round's streams
#: drain), yet bounds what one peer can pin: 32 streams, each one frame and a yamux buffer.
MAX_STREAMS_PER_PEER = 32

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
#: A direct dial of a peer that can also be reached through a relay is given up after this:
#: TCP, multistream-select, Noise XX and yamux take ~4 round trips (1.2 s at 300 ms), and a
#: firewall that drops our SYN answers nothing at all.
DIRECT_DIAL_S = 2.5
#: After a direct dial of such a peer failed, it is dialed through its relay first for this
#: long (a direct dial is then tried again).
DIRECT_RETRY_S = 300.0


class ListenError(OSError):
    """A configured listen address could not be listened on."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"cannot listen on {address}: {reason}")
        self.address = address
        self.reason = reason


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


class Admission:
    """Who may talk to this peer: an allowlist of Ed25519 public keys, or everyone ("open")."""

    def __init__(self, allowed: Iterable[bytes], open_to_all: bool = False) -> None:
        self.allowed = set(allowed)
        self.open_to_all = open_to_all

    def __contains__(self, key: object) -> bool:
        return self.open_to_all or key in self.allowed


@dataclass
class HostCounters:
    refused_connections: int = 0
    refused_streams: int = 0
    #: Inbound connections closed before the handshake: their IP had no failed admission left.
    rate_limited_connections: int = 0
    #: Failed admissions (failed handshakes and peers not admitted) of inbound connections.
    failed_admissions: int = 0
    #: Inbound connections closed before admission, by reason (INBOUND_REFUSAL_REASONS).
    inbound_refused: Counter[str] = field(default_factory=Counter)
    #: Streams of admitted peers reset because the peer was at max_streams_per_peer.
    capped_streams: Counter[bytes] = field(default_factory=Counter)
    #: Streams handed to a handler, per peer (only admitted peers ever appear here).
    served_streams: Counter[bytes] = field(default_factory=Counter)
    handler_errors: Counter[str] = field(default_factory=Counter)
    bytes_in: Counter[bytes] = field(default_factory=Counter)
    bytes_out: Counter[bytes] = field(default_factory=Counter)


def peer_key(peer_id: object) -> bytes | None:
    """The Ed25519 public key inside a libp2p ID, or None for other key types."""
    try:
        return public_key_from_peer_id(str(peer_id))
    except IdentityError:
        return None


def split_p2p_multiaddr(address: str) -> tuple[str, str]:
    """("/ip4/.../tcp/N", "12D3KooW...") from a full multiaddr ending in /p2p/ID."""
    head, sep, peer_id = address.rpartition("/p2p/")
    if not sep or not head or "/" in peer_id:
        raise ValueError(f"{address!r} does not end in /p2p/PEER_ID")
    public_key_from_peer_id(peer_id)  # raises IdentityError for a malformed id
    return head, peer_id


def _disable_connect_delay() -> None:
    # Trap 1: swarm waits _HAPPY_EYEBALLS_DELAY (250 ms) after every dial, even a successful one.
    import libp2p.network.swarm as swarm

    swarm._HAPPY_EYEBALLS_DELAY = 0.0


class Host:
    """A running libp2p host for one identity. Use ``async with Host(...).run() as host``."""

    def __init__(
        self,
        identity: Identity,
        listen: list[str],
        admission: Admission,
        *,
        enable_mdns: bool = False,
        on_rejected: Callable[[str], None] = lambda reason: None,
        max_streams_per_peer: int = MAX_STREAMS_PER_PEER,
        failed_admissions_per_minute: int = FAILED_ADMISSIONS_PER_MINUTE,
        max_pending: int | None = None,
        max_pending_per_ip: int | None = None,
        announce: Iterable[str] = (),
        relays: Iterable[str] = (),
        relay_service: bool = False,
    ) -> None:
        """``max_pending``, ``max_pending_per_ip``: the caps on inbound connections not
        admitted yet (None: MAX_PENDING, MAX_PENDING_PER_IP). ``announce``: the addresses
        (without /p2p/) others should dial, instead of the listen addresses; ``relays``: full
        multiaddrs of admitted relays to hold a reservation on; ``relay_service``: relay for
        admitted peers (relay.py)."""
        if max_streams_per_peer < 1:
            raise ValueError("max_streams_per_peer must be >= 1")
        self.failed_admissions = FailedAdmissions(failed_admissions_per_minute)
        self.pending = PendingAdmissions(
            MAX_PENDING_PER_IP if max_pending_per_ip is None else max_pending_per_ip,
            MAX_PENDING if max_pending is None else max_pending,
        )
        self.identity = identity
        self.listen = listen
        self.admission = admission
        self.enable_mdns = enable_mdns
        self.on_rejected = on_rejected  # counts framing refusals with the daemon's reasons
        self.counters = HostCounters()
        self.max_streams_per_peer = max_streams_per_peer
        self._active_streams: Counter[bytes] = Counter()  # per peer, in our handlers now
        self._host: object | None = None
        self._handlers: dict[str, StreamHandler] = {}
        self._refused_peers: trio.MemorySendChannel[object] | None = None
        #: Called with an admitted peer's key whenever one of its connections closes.
        self.disconnect_listeners: list[Callable[[bytes], None]] = []
        self.announce = list(announce)
        self.relays = list(relays)
        self.relay_service = relay_service
        self.relaying: Relaying | None = None
        self._circuits: dict[bytes, list[str]] = {}  # circuit addresses to dial, per peer
        self._relay_first_until: dict[bytes, float] = {}  # direct dial failed: relay first

    # ---- lifecycle ----

    @asynccontextmanager
    async def run(self) -> AsyncIterator[Host]:
        from libp2p import new_host
        from libp2p.crypto.ed25519 import create_new_key_pair
        from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
        from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
        from libp2p.security.noise.transport import Transport as NoiseTransport

        _disable_connect_delay()
        for address in self.listen:
            _check_port_free(address)
        key_pair = create_new_key_pair(self.identity.seed)
        noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
        host = new_host(
            key_pair=key_pair,
            muxer_preference="YAMUX",
            sec_opt={NOISE_ID: noise},  # trap 2: Noise only, never plaintext
            enable_mDNS=self.enable_mdns,
        )
        self._host = host
        send, receive = trio.open_memory_channel[object](256)
        self._refused_peers = send
        network = host.get_network()
        network.register_notifee(_AdmissionNotifee(self))  # type: ignore[arg-type]
        self._guard_libp2p_protocols(host)
        _return_inbound_slots(network, self)
        failure: ListenError | None = None
        try:
            addrs = [multiaddr.Multiaddr(a) for a in self.listen]
            async with host.run(listen_addrs=addrs):
                # Raised once out of libp2p's nurseries, so the caller gets it unwrapped.
                failure = _listen_failure(network, self.listen)
                if failure is None:
                    async with trio.open_nursery() as nursery:
                        # libp2p's auto-connector redials every peer in the peerstore (refused
                        # ones included) to keep ~200 connections; our discovery decides whom
                        # to dial.
                        auto_connector = getattr(network, "auto_connector", None)
                        if auto_connector is not None:
                            await auto_connector.stop()
                        nursery.start_soon(self._close_refused, receive)
                        for protocol, handler in self._handlers.items():
                            self._register(protocol, handler)
                        # Dialing through relays is open to every peer; serving as one,
                        # and reserving on them, only as configured.
                        from gossiplearn.peer.net.relay import Relaying

                        self.relaying = Relaying(self, self.relays, self.relay_service)
                        self.relaying.start(host)
                        self.disconnect_listeners.append(self.relaying.connection_lost)
                        if self.relays:
                            nursery.start_soon(self.relaying.keep_reservations)
                        try:
                            yield self
                        finally:
                            nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                await host.close()  # trap 6: leaving host.run() alone leaks connections
            self._host = None
        if failure is not None:
            raise failure

    @property
    def libp2p(self):  # noqa: ANN201 - the libp2p IHost, for the few calls we do not wrap
        if self._host is None:
            raise RuntimeError("host is not running")
        return self._host

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    def listen_addrs(self) -> list[str]:
        """Full listen multiaddrs, each ending in /p2p/PEER_ID."""
        out = []
        for addr in self.libp2p.get_addrs():
            text = str(addr)
            out.append(text if "/p2p/" in text else f"{text}/p2p/{self.peer_id}")
        return out

    def addrs(self) -> list[str]:
        """The full multiaddrs others should dial: ``announce`` if given, else the listen
        addresses (none when reserving on relays without announcing: this peer cannot be
        dialed), then a circuit address through each relay holding a reservation for us."""
        if self.announce:
            out = [f"{a}/p2p/{self.peer_id}" for a in self.announce]
        elif self.relays:
            out = []
        else:
            out = self.listen_addrs()
        if self.relaying is not None:
            from gossiplearn.peer.net.relay import circuit_address

            out += [circuit_address(r.address, self.peer_id) for r in self.relaying.held()]
        return out

    def accepts_connections(self) -> bool:
        """Whether others can dial this peer directly (it announces or listens, not only
        through relays): the bulk channel is served only then."""
        return bool(self.announce) or not self.relays

    # ---- handlers ----

    def handle(self, protocol: str, handler: StreamHandler) -> None:
        """Serve ``protocol``: ``handler(peer_key, stream)`` runs only for admitted peers."""
        self._handlers[protocol] = handler
        if self._host is not None:
            self._register(protocol, handler)

    def _register(self, protocol: str, handler: StreamHandler) -> None:
        from libp2p.custom_types import TProtocol

        async def guarded(stream: object) -> None:
            key = peer_key(stream.muxed_conn.peer_id)  # type: ignore[attr-defined]
            if key is None or key not in self.admission:
                # Refused before a byte of payload is read.
                self.counters.refused_streams += 1
                await _reset(stream)
                return
            if self._active_streams[key] >= self.max_streams_per_peer:
                # Over its cap: refused like a bad message, before a byte of payload is read.
                self.counters.capped_streams[key] += 1
                self.on_rejected("too_many_streams")
                await _reset(stream)
                return
            self._active_streams[key] += 1
            self.counters.served_streams[key] += 1
            try:
                await self._serve(protocol, handler, key, stream)
            finally:
                self._active_streams[key] -= 1
                if not self._active_streams[key]:
                    del self._active_streams[key]

        self.libp2p.set_stream_handler(TProtocol(protocol), guarded)

    async def _serve(
        self, protocol: str, handler: StreamHandler, key: bytes, stream: object
    ) -> None:
        try:
            await handler(key, stream)
        except Exception as exc:  # trap 3: an escaping exception kills the host
            self.counters.handler_errors[protocol] += 1
            # A peer that breaks framing or resets mid-frame sent a refused message: it is
            # counted like any other. Anything else is our bug: a warning, not a refusal.
            peer_fault = isinstance(exc, FramingError) or type(exc).__module__.startswith("libp2p")
            if peer_fault:
                self.on_rejected(
                    f"frame_{exc.reason}" if isinstance(exc, FramingError) else "stream_error"
                )
            log.log(
                logging.DEBUG if peer_fault else logging.WARNING,
                "handler %s failed for %s: %r",
                protocol,
                _short(key),
                exc,
            )
            await _reset(stream)
            return
        # Handlers may return without closing; an unclosed inbound stream stays in yamux
        # for the connection's whole life.
        await _close(stream)

    def active_streams(self, key: bytes) -> int:
        """Inbound streams of the peer ``key`` in our handlers right now."""
        return self._active_streams.get(key, 0)

    def _guard_libp2p_protocols(self, host: object) -> None:
        """libp2p's default handlers (identify, identify push, ping) for admitted peers only:
        a stranger's stream is reset before it is read, and counted like any refused stream."""
        mux = host.get_mux()  # type: ignore[attr-defined]
        for protocol, handler in list(mux.handlers.items()):
            if handler is not None and str(protocol) not in self._handlers:
                mux.add_handler(protocol, self._admitted_only(handler))

    def _admitted_only(self, handler: Callable[[object], Awaitable[None]]) -> Callable:
        async def guarded(stream: object) -> None:
            key = peer_key(stream.muxed_conn.peer_id)  # type: ignore[attr-defined]
            if key is None or key not in self.admission:
                self.counters.refused_streams += 1
                await _reset(stream)
                return
            await handler(stream)

        return guarded

    # ---- frames, counted per peer ----

    async def receive_frame(self, key: bytes, stream: object, max_bytes: int) -> bytes | None:
        frame = await read_frame(stream, max_bytes)  # type: ignore[arg-type]
        if frame is not None:
            self.counters.bytes_in[key] += HEADER_BYTES + len(frame)
        return frame

    async def send_frame(self, key: bytes, stream: object, frame: bytes) -> None:
        await write_frame(stream, frame)  # type: ignore[arg-type]
        self.counters.bytes_out[key] += HEADER_BYTES + len(frame)

    # ---- dialing ----

    async def connect(self, address: str, timeout_s: float = 5.0) -> bytes:
        """Dial a full multiaddr (.../p2p/ID); returns the peer's public key."""
        from libp2p.peer.peerinfo import info_from_p2p_addr

        _, peer_id = split_p2p_multiaddr(address)
        info = info_from_p2p_addr(multiaddr.Multiaddr(address))
        self._forget_failures(info.peer_id)
        with trio.fail_after(timeout_s):
            await self.libp2p.connect(info)
        return public_key_from_peer_id(peer_id)

    async def open_stream(self, key: bytes, protocol: str, timeout_s: float = 5.0) -> object:
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID

        peer = ID.from_base58(_peer_id_of(key))
        self._forget_failures(peer)
        with trio.fail_after(timeout_s):
            if self._circuits.get(key) and not self.libp2p.get_network().get_connections(peer):
                await self._dial_with_relays(key, peer)
            return await self.libp2p.new_stream(peer, [TProtocol(protocol)])

    async def _dial_with_relays(self, key: bytes, peer: Any) -> None:
        """Connect to a peer that has circuit addresses: directly first (bounded by
        DIRECT_DIAL_S), unless that failed within DIRECT_RETRY_S, then through its relays."""
        from libp2p.peer.peerinfo import PeerInfo

        try:
            direct = list(self.libp2p.get_peerstore().addrs(peer))
        except Exception:  # libp2p's PeerStoreError: no address known
            direct = []
        now = time.monotonic()
        if direct and self._relay_first_until.get(key, 0.0) <= now:
            try:
                with trio.fail_after(DIRECT_DIAL_S):
                    await self.libp2p.connect(PeerInfo(peer, direct))
                return
            except Exception as exc:
                log.debug("direct dial of %s failed (%r): through a relay", _short(key), exc)
                self._relay_first_until[key] = now + DIRECT_RETRY_S
                self._forget_failures(peer)
        errors = []
        for circuit in self._circuits.get(key, []):
            if self.relaying is None:
                break
            try:
                await self.relaying.dial(circuit)
                return
            except Exception as exc:
                errors.append(repr(exc))
        if direct:  # a direct dial is all that is left (new_stream makes it)
            return
        raise ConnectionError(f"no relay reached {_short(key)}: {'; '.join(errors) or 'none'}")

    def reached(self, key: bytes) -> str | None:
        """How the peer ``key`` is connected now: "direct", "relayed" (only through a relay),
        or None (not connected)."""
        from libp2p.peer.id import ID

        if self._host is None:
            return None
        connections = self.libp2p.get_network().get_connections(ID.from_base58(_peer_id_of(key)))
        if not connections:
            return None
        return "relayed" if all(_is_relayed(c) for c in connections) else "direct"

    def _forget_failures(self, peer: object) -> None:
        """libp2p refuses to dial a peer for 60 s after a failed dial (its negative cache);
        our callers back off themselves (discovery: 1 s, 2 s, 4 s, ...), so a peer that was
        down for a moment, or whose dial was rate-limited, is not shut out for a minute."""
        unblock = getattr(self.libp2p.get_network(), "unblock_peer", None)
        if unblock is not None:
            unblock(peer)

    def remember_addrs(self, key: bytes, addrs: Iterable[str], ttl_s: int = 600) -> None:
        """Add ``addrs`` (full multiaddrs) to those libp2p may dial the peer ``key`` on."""
        from libp2p.peer.id import ID

        parsed = []
        for addr in addrs:
            try:
                parsed.append(multiaddr.Multiaddr(split_p2p_multiaddr(addr)[0]))
            except Exception:  # a malformed address from a peer record is skipped
                continue
        if parsed:
            self.libp2p.get_peerstore().add_addrs(ID.from_base58(_peer_id_of(key)), parsed, ttl_s)

    def set_dial_addrs(self, key: bytes, addrs: Iterable[str], ttl_s: int = 600) -> None:
        """Dial the peer ``key`` on ``addrs`` only (full multiaddrs): the addresses libp2p
        knows for it (from earlier plans, or its identify answers) are replaced. Circuit
        addresses are kept apart, and dialed through their relay only if it is admitted."""
        from libp2p.peer.id import ID

        from gossiplearn.peer.net.neighbours import circuit_relay, is_circuit

        addrs = list(addrs)
        circuits = []
        for addr in (a for a in addrs if is_circuit(a)):
            relay = circuit_relay(addr)
            try:
                admitted = relay is not None and public_key_from_peer_id(relay) in self.admission
            except IdentityError:
                admitted = False
            if admitted and addr.endswith(f"/p2p/{_peer_id_of(key)}"):
                circuits.append(addr)
        self._circuits[key] = circuits
        parsed = []
        for addr in (a for a in addrs if not is_circuit(a)):
            try:
                parsed.append(multiaddr.Multiaddr(split_p2p_multiaddr(addr)[0]))
            except Exception:  # a malformed address from a peer record is skipped
                continue
        peer = ID.from_base58(_peer_id_of(key))
        peerstore = self.libp2p.get_peerstore()
        peerstore.clear_addrs(peer)
        if parsed:
            peerstore.add_addrs(peer, parsed, ttl_s)

    # ---- admission at the connection level ----

    def _on_connected(self, conn: object) -> None:
        key = peer_key(conn.muxed_conn.peer_id)  # type: ignore[attr-defined]
        if key is None or key not in self.admission:
            self.counters.refused_connections += 1
            # In a flood the queue fills; the stream-level check still refuses every stream.
            if self._refused_peers is not None:
                with contextlib.suppress(trio.WouldBlock):
                    self._refused_peers.send_nowait(conn.muxed_conn.peer_id)  # type: ignore[attr-defined]

    def _on_disconnected(self, conn: object) -> None:
        key = peer_key(conn.muxed_conn.peer_id)  # type: ignore[attr-defined]
        if key is not None and key in self.admission:
            for listener in self.disconnect_listeners:
                listener(key)

    async def _close_refused(self, receive: trio.MemoryReceiveChannel[object]) -> None:
        async for peer_id in receive:
            with trio.move_on_after(2):
                try:
                    await self.libp2p.disconnect(peer_id)
                except Exception as exc:
                    log.debug("closing refused connection failed: %r", exc)


def _is_relayed(conn: object) -> bool:
    """A swarm connection that runs over a relay (its raw connection is a relayed stream)."""
    muxed = getattr(conn, "muxed_conn", None)
    kind = getattr(muxed, "get_connection_type", None)
    with contextlib.suppress(Exception):
        if kind is not None and "RELAYED" in str(kind()):
            return True
    addresses = getattr(conn, "get_transport_addresses", None)
    with contextlib.suppress(Exception):
        if addresses is not None and any("/p2p-circuit" in str(a) for a in addresses()):
            return True
    return False


class _InboundSlot:
    """What the wrapped upgrade tells the wrapped inbound handler (one per connection)."""

    def __init__(self) -> None:
        self.conn: object | None = None
        self.upgraded = trio.Event()
        #: Its pending slot went to a newer connection (PendingAdmissions): close it.
        self.displaced = trio.Event()


#: The slot of the inbound connection being handled by the current task.
_INBOUND: contextvars.ContextVar[_InboundSlot] = contextvars.ContextVar("gossiplearn_inbound")


def _return_inbound_slots(swarm: object, host: Host) -> None:
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
        if timed_out:
            refuse("handshake_timeout")
        if not slot.upgraded.is_set():  # the handshake failed, timed out or was displaced
            host.counters.failed_admissions += 1

    swarm.upgrade_inbound_raw_conn = upgrade  # type: ignore[attr-defined]
    swarm._do_handle_inbound_connection = handle  # type: ignore[attr-defined]


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


def _listen_failure(network: object, listen: list[str]) -> ListenError | None:
    """libp2p logs a listen failure at debug level and runs on without that listener."""
    listening = getattr(network, "listeners", None)
    if listening is None:
        return None  # unknown swarm: cannot tell
    for address in listen:
        if address not in listening:
            return ListenError(address, "libp2p could not listen there")
    return None


def _remote_ip(read_write_closer: object) -> str | None:
    try:
        address = read_write_closer.get_remote_address()  # type: ignore[attr-defined]
        return str(ipaddress.ip_address(address[0])) if address else None
    except Exception:  # not an IP connection
        return None


def _check_port_free(address: str) -> None:
    """Raise ListenError if ``address``'s TCP port is taken. libp2p binds with SO_REUSEPORT,
    so a second daemon on the same port would bind too (and the kernel would share the
    connections between them); a bind without SO_REUSEPORT fails if anyone listens there.
    SO_REUSEADDR lets it past connections of an earlier run still in TIME_WAIT (a restart),
    which on Linux never lets it share a port with a listener."""
    parts = address.split("/")
    if len(parts) < 5 or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp" or parts[4] == "0":
        return
    family = socket.AF_INET if parts[1] == "ip4" else socket.AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((parts[2], int(parts[4])))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ListenError(address, f"port {parts[4]} is already in use") from None
            raise ListenError(address, exc.strerror or str(exc)) from None


class _AdmissionNotifee:
    """libp2p network notifee: refuses connections from peers that are not admitted."""

    def __init__(self, host: Host) -> None:
        self._host = host

    async def connected(self, network: object, conn: object) -> None:
        self._host._on_connected(conn)

    async def disconnected(self, network: object, conn: object) -> None:
        self._host._on_disconnected(conn)

    async def opened_stream(self, network: object, stream: object) -> None:
        return None

    async def closed_stream(self, network: object, stream: object) -> None:
        return None

    async def listen(self, network: object, multiaddr: object) -> None:
        return None

    async def listen_close(self, network: object, multiaddr: object) -> None:
        return None


def _peer_id_of(key: bytes) -> str:
    from gossiplearn.crypto.identity import peer_id_from_public_key

    return peer_id_from_public_key(key)


def _short(key: bytes) -> str:
    return _peer_id_of(key)[-8:]  # neighbours.short_id, which imports us


async def _reset(stream: object) -> None:
    # Already closed or reset: nothing left to do.
    with trio.move_on_after(1), contextlib.suppress(Exception):
        await stream.reset()  # type: ignore[attr-defined]


async def _close(stream: object) -> None:
    with trio.move_on_after(1), contextlib.suppress(Exception):
        await stream.close()  # type: ignore[attr-defined]
