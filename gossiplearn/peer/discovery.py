"""Finding neighbours and keeping track of them: bootstrap, liveness pings, peer exchange.

- Bootstrap: the configured multiaddrs of admitted peers are dialed (with backoff).
- Ping: every neighbour is pinged on its own schedule; an answer makes it live and measures
  the round-trip time, a failure backs off exponentially.
- Peer exchange: neighbours swap signed peer records (a peer signs its own addresses, with an
  expiry) of admitted peers only, so a closed network grows from one bootstrap address.
- Any admitted peer that opens a stream to us becomes a neighbour too.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable

import trio

from gossiplearn.crypto.identity import (
    Identity,
    peer_id_from_public_key,
    public_key_from_peer_id,
)
from gossiplearn.peer.host import (
    PEERS_PROTOCOL,
    PING_PROTOCOL,
    Admission,
    Host,
    split_p2p_multiaddr,
)
from gossiplearn.peer.neighbours import NeighbourTable
from gossiplearn.protocol import (
    Envelope,
    PeerRecord,
    Peers,
    ProtocolError,
    ReplayGuard,
    SequenceCounter,
    decode_envelope,
    encode_envelope,
)
from gossiplearn.protocol.messages import MAX_PEER_RECORDS

log = logging.getLogger("gossiplearn.discovery")

PING_BYTES = 16
PING_TIMEOUT_S = 5.0
RECORD_TTL_S = 3600
TICK_S = 0.25


def _now_ms() -> int:
    return int(time.time() * 1000)


class Discovery:
    def __init__(
        self,
        host: Host,
        table: NeighbourTable,
        admission: Admission,
        identity: Identity,
        *,
        bootstrap: list[str],
        ping_interval_s: float,
        peer_exchange: bool,
        replay: ReplayGuard,
        sequence: SequenceCounter,
        on_rejected: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.host = host
        self.table = table
        self.admission = admission
        self.identity = identity
        self.bootstrap = bootstrap
        self.ping_interval_s = ping_interval_s
        self.peer_exchange = peer_exchange
        self.replay = replay
        self.sequence = sequence
        self.records: dict[bytes, PeerRecord] = {}
        self.on_rejected = on_rejected
        self._rng = random.Random(os.urandom(8))

    # ---- tasks ----

    async def run(self) -> None:
        self._add_bootstrap()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ping_loop, nursery)
            if self.peer_exchange:
                nursery.start_soon(self._exchange_loop)

    def _add_bootstrap(self) -> None:
        for address in self.bootstrap:
            try:
                _, peer_id = split_p2p_multiaddr(address)
            except ValueError as exc:
                log.warning("ignoring bootstrap address %s: %s", address, exc)
                continue
            key = public_key_from_peer_id(peer_id)
            if key == self.identity.public_key:
                continue
            if key not in self.admission:
                log.warning(
                    "bootstrap peer %s is not admitted (add it with `gossiplearn allow`)", peer_id
                )
                continue
            self.table.add(key, [address], "bootstrap")

    async def _ping_loop(self, nursery: trio.Nursery) -> None:
        in_flight: set[bytes] = set()
        while True:
            now = time.monotonic()
            for neighbour in self.table.due(now):
                if neighbour.key not in in_flight:
                    in_flight.add(neighbour.key)
                    nursery.start_soon(self._ping, neighbour.key, in_flight)
            await trio.sleep(TICK_S)

    async def _ping(self, key: bytes, in_flight: set[bytes]) -> None:
        try:
            neighbour = self.table.get(key)
            if neighbour is None:
                return
            if neighbour.addrs:
                self.host.remember_addrs(key, neighbour.addrs)
            nonce = os.urandom(PING_BYTES)
            start = time.monotonic()
            with trio.fail_after(PING_TIMEOUT_S):
                stream = await self.host.open_stream(key, PING_PROTOCOL)
                try:
                    await self.host.send_frame(key, stream, nonce)
                    echo = await self.host.receive_frame(key, stream, PING_BYTES)
                finally:
                    await stream.close()  # type: ignore[attr-defined]
            if echo != nonce:
                raise ValueError("ping answered with the wrong nonce")
            now = time.monotonic()
            self.table.seen(key, now, (now - start) * 1000, next_check_s=self.ping_interval_s)
        except Exception as exc:
            self.table.failed(key, time.monotonic())
            log.debug("ping %s failed: %r", peer_id_from_public_key(key)[-8:], exc)
        finally:
            in_flight.discard(key)

    async def _exchange_loop(self) -> None:
        while True:
            await trio.sleep(self.ping_interval_s * self._rng.uniform(1.0, 2.0))
            live = self.table.live(time.monotonic())
            if live:
                await self._exchange_with(self._rng.choice(live).key)

    async def _exchange_with(self, key: bytes) -> None:
        try:
            with trio.fail_after(PING_TIMEOUT_S):
                stream = await self.host.open_stream(key, PEERS_PROTOCOL)
                try:
                    await self.host.send_frame(key, stream, self._peers_frame(key))
                    reply = await self.host.receive_frame(key, stream, 1 << 20)
                finally:
                    await stream.close()  # type: ignore[attr-defined]
            if reply is not None:
                self._ingest(key, reply)
        except Exception as exc:
            log.debug("peer exchange failed: %r", exc)

    # ---- handlers (admission already checked by the host) ----

    async def handle_ping(self, key: bytes, stream: object) -> None:
        nonce = await self.host.receive_frame(key, stream, PING_BYTES)
        if nonce is not None:
            await self.host.send_frame(key, stream, nonce)
        await stream.close()  # type: ignore[attr-defined]
        self.inbound(key)

    async def handle_peers(self, key: bytes, stream: object) -> None:
        frame = await self.host.receive_frame(key, stream, 1 << 20)
        if frame is not None:
            self._ingest(key, frame)
            await self.host.send_frame(key, stream, self._peers_frame(key))
        await stream.close()  # type: ignore[attr-defined]
        self.inbound(key)

    def inbound(self, key: bytes) -> None:
        """An admitted peer reached us: it is a neighbour, and alive."""
        if self.table.add(key, [], "inbound"):
            self.table.seen(key, time.monotonic())

    # ---- records ----

    def own_record(self) -> PeerRecord:
        now = _now_ms()
        addrs = tuple(self.host.addrs()[:8])
        return PeerRecord.create(
            self.identity, self.identity.public_key, addrs, now, now + RECORD_TTL_S * 1000
        )

    def _peers_frame(self, to: bytes) -> bytes:
        now = _now_ms()
        records = [self.own_record()] + [
            r for k, r in self.records.items() if k != to and r.verify(now)
        ]
        body = Peers(tuple(records[:MAX_PEER_RECORDS]))
        return encode_envelope(
            self.identity, self.identity.public_key, to, body, seq=self.sequence(), ts=now
        )

    def open_envelope(self, sender: bytes, frame: bytes) -> Envelope | None:
        """Decode and check a PEERS or STATUS frame from ``sender``; None (counted) if refused."""
        try:
            return decode_envelope(
                frame,
                recipient=self.identity.public_key,
                now_ms=_now_ms(),
                replay=self.replay,
                admitted=self.admission,
                expected_sender=sender,
            )
        except ProtocolError as exc:
            self.on_rejected(exc.reason)
            return None

    def _ingest(self, sender: bytes, frame: bytes) -> None:
        envelope = self.open_envelope(sender, frame)
        if envelope is None:
            return
        if not isinstance(envelope.body, Peers):
            self.on_rejected("unexpected_type")
            return
        now = _now_ms()
        for record in envelope.body.records:
            if record.key == self.identity.public_key or record.key not in self.admission:
                continue  # only admitted peers are passed on
            if not record.verify(now):
                self.on_rejected("bad_peer_record")
                continue
            known = self.records.get(record.key)
            if known is None or record.seq > known.seq:
                self.records[record.key] = record
                self.table.add(record.key, list(record.addrs), "exchange")
