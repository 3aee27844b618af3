"""The bulk channel: a round's PART and REDUCED frames over plain TCP, sealed with a key from
the round's own X25519 agreement.

Why: py-libp2p's Noise and yamux run in Python (~130-290 MB/s per stream on the reference
machine, most of a round's CPU at 10M parameters); AES-256-GCM from ``cryptography``
(OpenSSL, AES-NI) seals at ~9 GB/s there (its ChaCha20-Poly1305 at ~3 GB/s, PyNaCl's at
~0.7-1.3 GB/s). Control messages (INVITE ... ROSTER, WEIGHT_SHARE, CONFIRM,
ABORT) stay on libp2p; only the two bulky kinds come here, and only once the round's
roster is known at the sender. The frames themselves are the same signed envelopes: the
receiver's round machine checks each one exactly as it checks a frame from a libp2p stream
(signature, sender, recipient, freshness, replay).

Keys. Both members of a pair derive a 32-byte pair key from their X25519 agreement in the
round (:attr:`gossiplearn.protocol.aggregation.Aggregation.channel_keys`: label "bulk", bound
to the group id and both members' identity keys, exactly like the mask seeds; the X25519 keys
are in the signed ACCEPTs every member checked). Nobody else can derive it.

Connection (sender -> receiver's bulk port, which it asks once over libp2p, BULK_PROTOCOL,
and the IP of its libp2p connection to that peer)::

    header  = "GLB1" | group id (16) | sender key (32) | recipient key (32) | salt (32)
    records = (4-byte big-endian length | AES-256-GCM(frame))*,  then EOF
    answer  = one byte, 0x01, once the receiver queued every frame

Each record is sealed with ``BLAKE2b-256(key=pair key, person="gossiplearn.blk1",
data=header)`` and nonce = the record's index (96-bit big-endian). The random salt makes the
key fresh per connection and the header names the direction, so a (key, nonce) pair never
repeats; a record that was altered, dropped, reordered or replayed into another connection
fails to open, and the connection is closed. The receiver attributes frames to the header's
sender only after they open under the key it shares with that sender: only the two of them
hold it. A replayed whole connection opens, but its frames are refused by the replay guard.

The receiver closes a connection at once unless the header names itself as recipient, the
group it is in (waiting at most KEY_WAIT_S for that group's roster) and a member of it; it
serves at most MAX_CONNECTIONS at once, reads the header within HEADER_TIMEOUT_S, and takes
records only within the frame size limit and the round engine's per-peer frame quota, as a
libp2p stream's frames. A stranger costs it one header read and no public-key operation.

A sender that gets no answer (the port is closed, a firewall, an older peer) falls back to
libp2p streams for those frames; duplicates are refused by the replay guard.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable

import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger("gossiplearn.bulk")

BULK_PROTOCOL = "/gossiplearn/bulk/1.0.0"
MAGIC = b"GLB1"
GROUP_BYTES = 16
KEY_BYTES = 32
SALT_BYTES = 32
HEADER_BYTES = len(MAGIC) + GROUP_BYTES + 2 * KEY_BYTES + SALT_BYTES  # 116
TAG_BYTES = 16
ACK = b"\x01"
_PERSON = b"gossiplearn.blk1"

HEADER_TIMEOUT_S = 5.0
#: How long a connection for our current group may wait for that group's roster (its keys).
KEY_WAIT_S = 10.0
#: Between two records of one connection (a stalled sender gives its slot back).
RECORD_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 64

#: (group, sender, timeout_s) -> the pair key we share with ``sender`` in ``group``, or None
#: if ``group`` is not the round we are in or ``sender`` is not a member of it.
KeySource = Callable[[bytes, bytes, float], Awaitable[bytes | None]]
#: (sender, read) -> whether a frame was queued: takes a slot of the sender's frame quota,
#: awaits ``read()`` for the frame (None: no more) and queues it for the round machine.
Deliver = Callable[[bytes, Callable[[], Awaitable[bytes | None]]], Awaitable[bool]]


class BulkError(Exception):
    """The other side broke the bulk channel's rules (the connection is closed)."""


def record_key(pair_key: bytes, header: bytes) -> bytes:
    return hashlib.blake2b(header, key=pair_key, digest_size=32, person=_PERSON).digest()


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def make_header(group: bytes, sender: bytes, recipient: bytes, salt: bytes | None = None) -> bytes:
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    if len(group) != GROUP_BYTES or len(sender) != KEY_BYTES or len(recipient) != KEY_BYTES:
        raise ValueError("bad group id or key length")
    if len(salt) != SALT_BYTES:
        raise ValueError("bad salt length")
    return MAGIC + group + sender + recipient + salt


def parse_header(header: bytes) -> tuple[bytes, bytes, bytes]:
    """(group, sender, recipient) of a connection header."""
    if len(header) != HEADER_BYTES or not header.startswith(MAGIC):
        raise BulkError("not a bulk channel header")
    at = len(MAGIC)
    group = header[at : at + GROUP_BYTES]
    at += GROUP_BYTES
    sender = header[at : at + KEY_BYTES]
    recipient = header[at + KEY_BYTES : at + 2 * KEY_BYTES]
    return group, sender, recipient


class Sealer:
    """Seals the records of one connection, in order."""

    def __init__(self, pair_key: bytes, header: bytes) -> None:
        self._aead = AESGCM(record_key(pair_key, header))
        self._index = 0

    def seal(self, frame: bytes) -> bytes:
        sealed = self._aead.encrypt(_nonce(self._index), frame, None)
        self._index += 1
        return sealed


class Opener:
    """Opens the records of one connection, in order; any failure is final."""

    def __init__(self, pair_key: bytes, header: bytes) -> None:
        self._aead = AESGCM(record_key(pair_key, header))
        self._index = 0

    def open(self, sealed: bytes | bytearray) -> bytes:
        try:
            frame = self._aead.decrypt(_nonce(self._index), sealed, None)
        except InvalidTag:
            raise BulkError(f"record {self._index} does not open under the pair key") from None
        self._index += 1
        return frame


async def _receive_exactly(
    sock: trio.socket.SocketType, count: int, *, at_start: bool
) -> bytearray | None:
    """``count`` bytes; None on a clean EOF before the first byte if ``at_start``."""
    buffer = bytearray(count)
    view = memoryview(buffer)
    filled = 0
    while filled < count:
        got = await sock.recv_into(view[filled:], count - filled)
        if not got:
            if at_start and filled == 0:
                return None
            raise BulkError(f"EOF after {filled} of {count} bytes")
        filled += got
    return buffer


class BulkChannel:
    """One peer's bulk channel: a TCP listener for incoming frames, and a sender."""

    def __init__(
        self,
        me: bytes,
        keys: KeySource,
        deliver: Deliver,
        *,
        max_record_bytes: int,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.me = me
        self._keys = keys
        self._deliver = deliver
        self.max_record_bytes = max_record_bytes + TAG_BYTES
        self.max_connections = max_connections
        self.port: int | None = None
        self._serving = 0
        self.refused = 0  # connections closed for a bad header, unknown group or record
        self.frames_in = 0

    # ---- receiving ----

    async def serve(
        self,
        host: str,
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,  # type: ignore[name-defined]
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        try:
            await trio.serve_listeners(self._handle, listeners)
        finally:
            self.port = None

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self._serving >= self.max_connections:
                self.refused += 1
                return
            self._serving += 1
            try:
                await self._receive(stream)
            except (BulkError, OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                self.refused += 1
                log.debug("bulk connection closed: %r", exc)
            finally:
                self._serving -= 1

    async def _receive(self, stream: trio.SocketStream) -> None:
        sock = stream.socket
        with trio.fail_after(HEADER_TIMEOUT_S):
            received = await _receive_exactly(sock, HEADER_BYTES, at_start=False)
        assert received is not None
        header = bytes(received)
        group, sender, recipient = parse_header(header)
        if recipient != self.me or sender == self.me:
            raise BulkError("header names another recipient")
        pair_key = await self._keys(group, sender, KEY_WAIT_S)
        if pair_key is None:
            raise BulkError("no round with that group and sender")
        opener = Opener(pair_key, header)
        limit = self.max_record_bytes

        async def read() -> bytes | None:
            with trio.fail_after(RECORD_TIMEOUT_S):
                prefix = await _receive_exactly(sock, 4, at_start=True)
                if prefix is None:
                    return None
                length = int.from_bytes(prefix, "big")
                if not TAG_BYTES <= length <= limit:
                    raise BulkError(f"record of {length} bytes (limit {limit})")
                sealed = await _receive_exactly(sock, length, at_start=False)
            assert sealed is not None
            return opener.open(sealed)

        while await self._deliver(sender, read):
            self.frames_in += 1
        await stream.send_all(ACK)

    # ---- sending ----

    async def send(
        self,
        address: tuple[str, int],
        group: bytes,
        recipient: bytes,
        pair_key: bytes,
        frames: list[bytes],
    ) -> None:
        """Send ``frames`` to ``recipient`` at ``address``; returns once it acknowledged them
        all (raises otherwise: the caller falls back to libp2p)."""
        header = make_header(group, self.me, recipient)
        sealer = Sealer(pair_key, header)
        stream = await trio.open_tcp_stream(*address)
        async with stream:
            await stream.send_all(header)
            for frame in frames:
                sealed = sealer.seal(frame)
                await stream.send_all(len(sealed).to_bytes(4, "big"))
                await stream.send_all(sealed)
            await stream.send_eof()
            answer = await stream.receive_some(1)
            if answer != ACK:
                raise BulkError("the receiver did not acknowledge the frames")


def listen_host(listen: list[str]) -> str | None:
    """The IP of the first /ip4 or /ip6 TCP listen multiaddr, where the bulk channel listens."""
    for address in listen:
        parts = address.split("/")
        if len(parts) >= 5 and parts[1] in ("ip4", "ip6") and parts[3] == "tcp":
            return parts[2]
    return None


async def close_quietly(stream: object) -> None:
    with trio.move_on_after(1), contextlib.suppress(Exception):
        await stream.close()  # type: ignore[attr-defined]
