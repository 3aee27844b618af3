"""Our wrapper around a py-libp2p host: the traps of py-libp2p 0.8.1 that we know of, each
handled here.

- Noise is the only security transport (default hosts also accept plaintext peers); yamux.
- The 250 ms "happy eyeballs" wait on every connect is switched off.
- Admission: connections and streams from peers not admitted are refused before any payload
  is read, and counted; refused connections are closed. libp2p's own protocols (identify,
  identify push, ping) are served to admitted peers only: a stranger gets no agent string,
  listen addresses, protocol list or signed peer record.
- Inbound connections: strangers are kept to a bounded share of libp2p's inbound slots, and
  the slots come back when connections close (perimeter.py).
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
import errno
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
from gossiplearn.peer.net.perimeter import (
    FAILED_ADMISSIONS_PER_MINUTE,
    MAX_PENDING,
    MAX_PENDING_PER_IP,
    FailedAdmissions,
    PendingAdmissions,
    guard_inbound,
)

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
        guard_inbound(network, self)
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


def _listen_failure(network: object, listen: list[str]) -> ListenError | None:
    """libp2p logs a listen failure at debug level and runs on without that listener."""
    listening = getattr(network, "listeners", None)
    if listening is None:
        return None  # unknown swarm: cannot tell
    for address in listen:
        if address not in listening:
            return ListenError(address, "libp2p could not listen there")
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
