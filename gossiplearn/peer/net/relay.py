"""Circuit relay v2 between admitted peers: a peer that cannot accept connections (a firewall
that lets only outbound connections through, a NAT without port forwarding) reserves a slot on
a relay that another organization of the network runs, and the others reach it through that
relay when they have no connection to it.

What py-libp2p 0.8.1 ships (``libp2p.relay.circuit_v2``) and what we use of it:

- ``CircuitV2Protocol``: the relay's HOP handler (RESERVE, CONNECT; bytes copied between the
  two streams) and the destination's STOP handler (the relayed stream becomes a raw connection
  that the swarm upgrades with Noise and yamux like any inbound one). We register both
  ourselves, each behind admission (:class:`Relaying`), and never run its service loop.
- ``CircuitV2Transport``: ``_make_reservation`` (RESERVE on a HOP stream) and ``dial`` (CONNECT,
  then the usual Noise + yamux upgrade over the relayed stream). Its relay discovery, DHT and
  automatic reservations are not used: we reserve on the relays the operator configured
  (``peer.relays``) and keep those reservations ourselves. Its ``RelayConfig`` is built without
  the CLIENT role, or every dial would first reserve a slot for the dialer.
- The swarm's own dialing skips ``/p2p-circuit`` addresses, so the host dials them through the
  transport itself (:meth:`Relaying.dial`) when a peer has no connection and no direct
  address works.
- DCUtR (hole punching) is not used. A peer behind a firewall or NAT still dials out: it
  connects to every admitted peer that accepts connections itself, and those connections carry
  rounds both ways; only two peers that both accept nothing need the relay between them. Hole
  punching would move those two to a direct path, at the price of NAT behaviour this project
  cannot test (its network lab has firewalls, not NATs).

What admission adds (the relay serves the organizations of its own network, nobody else):

- HOP streams are served only to admitted peers, and only when ``peer.relay_service`` is on;
  a reservation is always for the asker itself (py-libp2p reserves for whatever peer id the
  RESERVE names), and a CONNECT only reaches a peer we admit that holds a reservation.
- STOP streams (a relayed connection arriving) are accepted only from the relays this peer
  reserved on; the relayed connection's own Noise handshake then names its source, which our
  admission checks like any connection's (a peer we do not admit is refused and counted).
- py-libp2p refuses RESERVE and CONNECT over an already relayed connection (no chains).

What a relay costs its operator: each relayed connection is two streams on it (one from each
end), and every byte crosses it twice, Noise-decrypted and re-encrypted per hop (the end to
end Noise session on top stays opaque to it). Limits per reservation: MAX_CIRCUITS circuits at
once, CIRCUIT_BYTES per circuit, reservations last RESERVATION_TTL_S (renewed well before).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import multiaddr
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import STOP_PROTOCOL_ID as STOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport

from gossiplearn.crypto.identity import public_key_from_peer_id
from gossiplearn.peer.net.neighbours import circuit_relay, is_circuit

__all__ = ["AdmittedRelay", "Relaying", "circuit_address", "circuit_relay", "is_circuit"]

if TYPE_CHECKING:
    from gossiplearn.peer.net.host import Host

log = logging.getLogger("gossiplearn.relay")

#: Relayed connections to one reserving peer at once: it has at most one per other peer of
#: the network that cannot reach it directly (a connection per pair; a simultaneous dial both
#: ways can leave two), so 16 covers the 8 peers behind firewalls a relay has been seen to serve.
MAX_CIRCUITS = 16
#: Reservations a relay holds at once (one per peer behind a firewall that chose it).
MAX_RESERVATIONS = 64
#: Bytes one relayed connection may carry, both ways together, before the relay resets it (it
#: is then dialed again). A round moves ~4x the backbone through each of a member's
#: connections at most; 64 GiB is ~400 rounds of a 40 MB backbone.
CIRCUIT_BYTES = 64 << 30
#: A reservation's lifetime; it is renewed RENEW_MARGIN_S before it ends.
RESERVATION_TTL_S = 3600
RENEW_MARGIN_S = 600
#: Reconnection to a relay backs off from 1 s, doubling up to this.
RESERVE_BACKOFF_MAX_S = 60.0
#: A dial (to a relay, or through one) that has not finished by then is given up: a TCP
#: handshake, Noise and yamux to the relay, CONNECT and its answer, and Noise and yamux again
#: through it: ~9 round trips, 2.7 s at a 300 ms round trip, plus one lost SYN (1 s).
DIAL_TIMEOUT_S = 6.0


def circuit_address(relay_address: str, peer_id: str) -> str:
    """Where ``peer_id`` is reached through the relay at ``relay_address`` (.../p2p/RELAY)."""
    return f"{relay_address}/p2p-circuit/p2p/{peer_id}"


class AdmittedRelay(CircuitV2Protocol):
    """py-libp2p's relay, with a reservation always for the asker and CONNECT only to peers
    we admit (see the module docstring)."""

    def __init__(self, host: Any, admitted: Callable[[object], bool], **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self._admitted = admitted
        self.circuits_opened = 0
        self.refusals: Counter[str] = Counter()

    async def _handle_reserve(self, stream: Any, msg: Any) -> None:
        remote = stream.muxed_conn.peer_id
        if msg.HasField("peer") and msg.peer.id and msg.peer.id != remote.to_bytes():
            self.refusals["reserve_for_other"] += 1
            msg.peer.id = remote.to_bytes()  # a reservation is for the asker, nobody else
        await super()._handle_reserve(stream, msg)

    async def _handle_connect(self, stream: Any, msg: Any) -> None:
        if not self._admitted(ID(msg.peer.id)):
            self.refusals["connect_not_admitted"] += 1
            await stream.reset()
            return
        self.circuits_opened += 1
        await super()._handle_connect(stream, msg)


@dataclass
class _Reservation:
    address: str  # the relay's full multiaddr (.../p2p/RELAY)
    key: bytes
    expires: float = 0.0  # Unix time; 0: none held
    failures: int = 0
    last_error: str = ""


class Relaying:
    """One host's part in circuit relaying: the relay service (``service``), reservations on
    ``relays`` (full multiaddrs of admitted peers offering the service), and dialing through
    them."""

    def __init__(self, host: Host, relays: Sequence[str], service: bool) -> None:
        self.host = host
        self.service = service
        self.reservations = [
            _Reservation(address, public_key_from_peer_id(address.rpartition("/p2p/")[2]))
            for address in relays
        ]
        self._relay_keys = {r.key for r in self.reservations}
        self._protocol: AdmittedRelay | None = None
        self._transport: CircuitV2Transport | None = None
        self._lost: dict[bytes, trio.Event] = {}
        self.dials = Counter[str]()

    def start(self, libp2p: Any) -> None:
        """Register the HOP (service) and STOP (reservations) handlers, behind admission."""
        limits = RelayLimits(
            duration=0,  # no cap on a relayed connection's life
            data=CIRCUIT_BYTES,
            max_circuit_conns=MAX_CIRCUITS,
            max_reservations=MAX_RESERVATIONS,
            reservation_ttl=RESERVATION_TTL_S,
        )
        protocol = AdmittedRelay(libp2p, self._admits, limits=limits, allow_hop=self.service)
        self._protocol = protocol
        self._transport = CircuitV2Transport(libp2p, protocol, RelayConfig(roles=RelayRole.STOP))
        if self.service:
            hop: Callable[[Any], Awaitable[None]] = protocol._handle_hop_stream
            libp2p.set_stream_handler(HOP_PROTOCOL, self.host._admitted_only(hop))
        if self.reservations:
            libp2p.set_stream_handler(
                STOP_PROTOCOL, self._from_our_relays(protocol._handle_stop_stream)
            )

    def _admits(self, peer: object) -> bool:
        from gossiplearn.peer.net.host import peer_key

        key = peer_key(peer)
        return key is not None and key in self.host.admission

    def _from_our_relays(self, handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
        from gossiplearn.peer.net.host import _reset, peer_key

        async def guarded(stream: Any) -> None:
            key = peer_key(stream.muxed_conn.peer_id)
            if key is None or key not in self._relay_keys or key not in self.host.admission:
                self.host.counters.refused_streams += 1
                await _reset(stream)
                return
            await handler(stream)

        return guarded

    # ---- reservations ----

    def connection_lost(self, key: bytes) -> None:
        event = self._lost.get(key)
        if event is not None:
            event.set()

    async def keep_reservations(self) -> None:
        async with trio.open_nursery() as nursery:
            for reservation in self.reservations:
                nursery.start_soon(self._keep, reservation)

    async def _keep(self, reservation: _Reservation) -> None:
        """Hold a reservation on one relay: reserve, renew before it ends, and reserve again
        at once if the connection to the relay is lost."""
        assert self._transport is not None
        libp2p = self.host.libp2p
        info = info_from_p2p_addr(multiaddr.Multiaddr(reservation.address))
        while True:
            lost = self._lost[reservation.key] = trio.Event()
            ok = False
            try:
                with trio.fail_after(DIAL_TIMEOUT_S):
                    self.host._forget_failures(info.peer_id)
                    await libp2p.connect(info)
                    stream = await libp2p.new_stream(info.peer_id, [HOP_PROTOCOL])
                    try:
                        ok = await self._transport._make_reservation(stream, info.peer_id)
                    finally:
                        await stream.close()
                if ok:
                    reservation.expires = float(
                        self._transport._reservations.get(info.peer_id, time.time() + 60)
                    )
                    reservation.failures = 0
                    reservation.last_error = ""
                    log.info(
                        "relay %s holds a reservation for us (for %d s)",
                        info.peer_id,
                        reservation.expires - time.time(),
                    )
                else:
                    reservation.last_error = "refused"
            except Exception as exc:
                reservation.last_error = type(exc).__name__
                log.debug("reservation on %s failed: %r", info.peer_id, exc)
            if ok:
                wait = max(1.0, reservation.expires - time.time() - RENEW_MARGIN_S)
            else:
                reservation.expires = 0.0
                reservation.failures += 1
                wait = min(RESERVE_BACKOFF_MAX_S, 2.0 ** (reservation.failures - 1))
            with trio.move_on_after(wait):
                await lost.wait()
            if lost.is_set():
                reservation.expires = 0.0
                await trio.sleep(0.5)  # let libp2p drop the dead connection first

    def held(self) -> list[_Reservation]:
        now = time.time()
        return [r for r in self.reservations if r.expires > now]

    # ---- dialing through a relay ----

    async def dial(self, circuit: str) -> None:
        """Connect through a circuit address (the connection is added to the swarm)."""
        if self._transport is None:
            raise RuntimeError("relaying is not started")
        self.dials["attempted"] += 1
        with trio.fail_after(DIAL_TIMEOUT_S):
            await self._transport.dial(multiaddr.Multiaddr(circuit))
        self.dials["connected"] += 1

    # ---- status ----

    def status(self) -> dict[str, Any]:
        protocol = self._protocol
        now = time.time()
        serving = (
            {
                "reservations": len(protocol.resource_manager._reservations),
                "circuits_opened": protocol.circuits_opened,
                "circuits_active": len(protocol._active_relays),
                "refused": dict(protocol.refusals),
            }
            if protocol is not None and self.service
            else None
        )
        return {
            "service": serving,
            "reservations": [
                {
                    "relay": r.address,
                    "held": r.expires > now,
                    "expires_in_s": round(r.expires - now) if r.expires > now else None,
                    "last_error": r.last_error or None,
                }
                for r in self.reservations
            ],
            "dials": dict(self.dials),
        }
