"""Finding neighbours and keeping track of them: bootstrap, liveness pings, peer exchange.

- Bootstrap: the configured multiaddrs of admitted peers are dialed (with backoff).
- Ping: every neighbour is pinged on its own schedule; an answer makes it live and measures
  the round-trip time, a failure backs off exponentially. The answer also carries the
  responder's wall clock and backbone schema hash (a second frame after the echo, which older
  peers neither send nor read), so each neighbour's clock offset is estimated (NTP-style:
  its time minus the midpoint of our send and receive times, error at most RTT/2) and a
  neighbour that is out of tolerance, or runs another model, is shown and not invited.
- Peer exchange: neighbours swap signed peer records (a peer signs its own addresses, with an
  expiry) of admitted peers only, so a closed network grows from one bootstrap address. A
  record's subject chooses what it lists, so a record may not expire later than
  ``MAX_RECORD_TTL_S`` from now, and only ``MAX_RECORD_DIALS`` of its addresses are ever
  dialed (see neighbours.py): an admitted peer cannot turn the network into a reflector.
- Any admitted peer that opens a stream to us becomes a neighbour too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import struct
import time
from collections.abc import Callable

import trio

from gossiplearn.crypto.identity import (
    Identity,
    peer_id_from_public_key,
    public_key_from_peer_id,
)
from gossiplearn.peer.net.host import (
    PEERS_PROTOCOL,
    PING_PROTOCOL,
    Admission,
    Host,
    split_p2p_multiaddr,
)
from gossiplearn.peer.net.neighbours import (
    Neighbour,
    NeighbourTable,
    address_ip,
    is_circuit,
    short_id,
)
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
#: The ping answer's second frame: our wall clock (ms, big-endian int64) + schema hash.
PING_INFO = struct.Struct(">q")
PING_INFO_MAX_BYTES = PING_INFO.size + 64
PING_TIMEOUT_S = 5.0
RECORD_TTL_S = 3600
#: A record expiring later than this from now is refused (ours last RECORD_TTL_S; the rest is
#: room for clock offsets).
MAX_RECORD_TTL_S = RECORD_TTL_S + 600
TICK_S = 0.25


def _short(key: bytes) -> str:
    return short_id(peer_id_from_public_key(key))


def _dial_problem(exc: BaseException) -> str | None:
    """What a failed dial says that an operator can fix: a peer id that does not match the
    key the address answers with (libp2p's PeerIDMismatchesPubkey, somewhere in the chain)."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        error = stack.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if type(error).__name__ == "PeerIDMismatchesPubkey":
            text = str(error)
            found = text.rpartition("remote_peer_id_from_pubkey=")[2].strip()
            return f"answers as peer {found}" if found and found != text else text
        stack.extend(getattr(error, "errors", None) or [])
        stack.extend(getattr(error, "exceptions", None) or [])
        for linked in (error.__cause__, error.__context__):
            if linked is not None:
                stack.append(linked)
    return None


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
        schema_hash: Callable[[], bytes] = lambda: b"",
        clock: Callable[[], float] = time.time,
        on_problem: Callable[[str, bytes, str], None] | None = None,
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
        #: Our backbone schema hash, sent in ping answers (empty: not known yet).
        self.schema_hash = schema_hash
        #: Our wall clock in seconds (injected so that tests can run a peer with a skewed one).
        self.clock = clock
        #: Told (cause, peer key, detail) of a problem seen while dialing (say, a wrong peer
        #: id); the daemon logs each cause once. Default: a debug line.
        self.on_problem = on_problem or (
            lambda cause, key, detail: log.debug("%s %s: %s", cause, _short(key), detail)
        )
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
            self.table.add(key, [address], "bootstrap", configured=True)

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
            plan = neighbour.dial_plan()
            if plan:
                self.host.set_dial_addrs(key, plan)
            nonce = os.urandom(PING_BYTES)
            with trio.fail_after(PING_TIMEOUT_S):
                stream = await self.host.open_stream(key, PING_PROTOCOL)
                try:
                    # The round trip of the echo alone: opening the stream costs round trips
                    # of its own (a dial, protocol negotiation), several at once on a WAN.
                    start = time.monotonic()
                    sent_at = self.clock()
                    await self.host.send_frame(key, stream, nonce)
                    echo = await self.host.receive_frame(key, stream, PING_BYTES)
                    received_at = self.clock()
                    rtt_ms = (time.monotonic() - start) * 1000
                    info = None
                    if echo == nonce:
                        info = await self.host.receive_frame(key, stream, PING_INFO_MAX_BYTES)
                finally:
                    await stream.close()  # type: ignore[attr-defined]
            if echo != nonce:
                raise ValueError("ping answered with the wrong nonce")
            now = time.monotonic()
            self.table.seen(key, now, rtt_ms, next_check_s=self.ping_interval_s)
            self._connected(neighbour, stream, plan)
            if info is not None and len(info) >= PING_INFO.size:
                (their_ms,) = PING_INFO.unpack_from(info)
                self.table.clock(key, their_ms - (sent_at + received_at) * 500)
                self.table.schema(key, bytes(info[PING_INFO.size :]) or None)
        except Exception as exc:
            problem = _dial_problem(exc)
            self.table.failed(key, time.monotonic(), problem)
            if problem is not None:
                self.on_problem("peer_id_mismatch", key, problem)
            log.debug("ping %s failed: %r", _short(key), exc)
        finally:
            in_flight.discard(key)

    def _connected(self, neighbour: Neighbour, stream: object, plan: list[str]) -> None:
        """Note the IP the connection goes to, and which of our addresses it dialed (through a
        relay: the circuit address; the relay's IP is not the peer's)."""
        if self._relayed(neighbour.key):
            circuit = next((a for a in plan if is_circuit(a)), None)
            self.table.connected_via(neighbour.key, None, circuit)
            return
        try:
            remote = stream.get_remote_address()  # type: ignore[attr-defined]
        except Exception:
            remote = None
        if not remote:
            return
        ip, port = str(remote[0]), str(remote[1])
        dialed = next(
            (a for a in plan if address_ip(a) == ip and a.split("/")[4:5] == [port]), None
        )
        self.table.connected_via(neighbour.key, ip, dialed)

    def _relayed(self, key: bytes) -> bool:
        reached = getattr(self.host, "reached", None)  # test doubles may not say
        return reached is not None and reached(key) == "relayed"

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
            info = PING_INFO.pack(int(self.clock() * 1000)) + self.schema_hash()
            await self.host.send_frame(key, stream, nonce)
            # A pinger of an older version reads the echo only and may be gone already.
            with contextlib.suppress(Exception):
                await self.host.send_frame(key, stream, info)
        await stream.close()  # type: ignore[attr-defined]
        self.inbound(key, stream)

    async def handle_peers(self, key: bytes, stream: object) -> None:
        """Answer with our signed records only once the asker's PEERS frame verified (its
        signature, sender, recipient, freshness, replay): a frame we refused gets nothing,
        so nobody gets a signed answer for an unsigned question (nor makes us sign at will)."""
        frame = await self.host.receive_frame(key, stream, 1 << 20)
        if frame is not None and self._ingest(key, frame):
            await self.host.send_frame(key, stream, self._peers_frame(key))
        await stream.close()  # type: ignore[attr-defined]
        self.inbound(key, stream)

    def inbound(self, key: bytes, stream: object | None = None) -> None:
        """An admitted peer reached us: it is a neighbour, and alive (and, given its stream,
        seen on that connection's IP, unless it came through a relay)."""
        if self.table.add(key, [], "inbound"):
            self.table.seen(key, time.monotonic())
            if stream is not None and not self._relayed(key):
                with contextlib.suppress(Exception):
                    remote = stream.get_remote_address()  # type: ignore[attr-defined]
                    self.table.connected_via(key, str(remote[0]) if remote else None)

    # ---- records ----

    def own_record(self) -> PeerRecord:
        now = int(self.clock() * 1000)
        addrs = tuple(self.host.addrs()[:8])
        return PeerRecord.create(
            self.identity, self.identity.public_key, addrs, now, now + RECORD_TTL_S * 1000
        )

    def _peers_frame(self, to: bytes) -> bytes:
        now = int(self.clock() * 1000)
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
                now_ms=int(self.clock() * 1000),
                replay=self.replay,
                admitted=self.admission,
                expected_sender=sender,
            )
        except ProtocolError as exc:
            self.on_rejected(exc.reason)
            return None

    def _ingest(self, sender: bytes, frame: bytes) -> bool:
        """Take in the records of a PEERS frame; False (counted) if the frame was refused."""
        envelope = self.open_envelope(sender, frame)
        if envelope is None:
            return False
        if not isinstance(envelope.body, Peers):
            self.on_rejected("unexpected_type")
            return False
        now = int(self.clock() * 1000)
        for record in envelope.body.records:
            if record.key == self.identity.public_key or record.key not in self.admission:
                continue  # only admitted peers are passed on
            if record.expires_ms > now + MAX_RECORD_TTL_S * 1000:
                self.on_rejected("peer_record_expiry")
                continue
            if not record.verify(now):
                self.on_rejected("bad_peer_record")
                continue
            known = self.records.get(record.key)
            if known is None or record.seq > known.seq:
                self.records[record.key] = record
                if self.table.add(record.key, [], "exchange"):
                    self.table.replace_addrs(record.key, list(record.addrs))
        return True
