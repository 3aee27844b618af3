"""The bulk channel: a round's PART and REDUCED frames over plain TCP, sealed with a key from
the round's own X25519 agreement.

Why: py-libp2p's Noise and yamux run in Python (~130-290 MB/s per stream on the reference
machine, most of a round's CPU at 10M parameters); AES-256-GCM from ``cryptography``
(OpenSSL, AES-NI) seals at ~9 GB/s there (its ChaCha20-Poly1305 at ~3 GB/s, PyNaCl's at
~0.7-1.3 GB/s). Control messages (INVITE ... READY, ROSTER, CONFIRM, ABORT) stay on libp2p;
only the two bulky kinds come here, and only once the round's roster is known at the sender.
The frames themselves are the same signed envelopes: the receiver's round machine checks each
one exactly as it checks a frame from a libp2p stream (signature, sender, recipient,
freshness, replay).

Keys. Both members of a pair derive a 32-byte pair key from their X25519 agreement in the
round (:attr:`gossiplearn.protocol.aggregation.Aggregation.channel_keys`: label "bulk", bound
to the round's transcript and both members' identity keys, exactly like the mask seeds).
Nobody else can derive it.

Connection (sender -> receiver's bulk port, which it asks once over libp2p, BULK_PROTOCOL,
and the IP of its libp2p connection to that peer)::

    header  = "GLB2" | group id (16) | sender key (32) | recipient key (32) | salt (32)
    hello   = 4-byte big-endian length (16) | AES-256-GCM(b"")       the first record
    records = (4-byte big-endian length | AES-256-GCM(frame))+,  then EOF
              (a streamed round's frames as they come; EOF once none came for a while)
    answer  = one byte, 0x01, once the receiver queued every frame (never before the first)

Each record is sealed with ``BLAKE2b-256(key=pair key, person="gossiplearn.blk1",
data=header)`` and nonce = the record's index (96-bit big-endian; the hello is record 0).
The random salt makes the key fresh per connection and the header names the direction, so a
(key, nonce) pair never repeats; a record that was altered, dropped, reordered or replayed
into another connection fails to open, and the connection is closed. A whole connection
replayed opens, but the receiver remembers the salts of the last SEEN_SALTS connections that
authenticated and closes a repeat.

Authentication comes first. The sender writes the header and the hello together; the
receiver reads those 136 bytes (whatever they say) within FIRST_RECORD_TIMEOUT_S of the
connection's arrival, then checks that the header names itself as recipient, the round it is
in and a member of it (waiting at most KEY_WAIT_S for that round's roster), and that the hello
opens under the pair key it shares with that member. Until then the connection is nobody's:
it holds one of MAX_UNAUTHENTICATED slots (one more is closed at once, counted as
``busy``), and nothing is queued or counted against the member the header names. Once
authenticated, it is that member's: a member has at most MAX_PER_SENDER connections at once
(one more is closed, ``sender_cap``), and its frames take slots of its frame quota in the
round engine (PEER_FRAMES), one per frame read, as frames from its libp2p streams do. A
connection that delivered no frame gets no answer, whatever its header said.

What a stranger (anyone without the pair key: a local user who read the group id in the
status, or a host on the network) can cost a member now, per connection: a socket and a task
for at most FIRST_RECORD_TIMEOUT_S = 2 s (or 2 + KEY_WAIT_S = 12 s if its header names our
current round while we wait for its roster), 136 bytes read, no public-key operation (at most
one BLAKE2b and one AES-GCM open of an empty record). At most MAX_UNAUTHENTICATED = 32 such
connections at once: 32 sockets and 32 x 136 B = 4.3 KiB of buffers. When it keeps all 32
busy, members' connections are closed at once and their senders send those frames over libp2p
instead (and for BULK_RETRY_S = 60 s after): the round is slower for a large model (Noise and
yamux at ~190-300 MB/s instead of AES-GCM's GB/s: ~0.2 s more per 40 MB shard batch), never
stopped. It cannot: take one slot of any member's frame quota or of its per-sender cap,
queue a byte for the round machine, get a byte back, or learn whether a header names a real
round member (every header gets the same 136-byte read and the same silent close, except
that one naming our current round waits for the roster before it is closed: the round's
group id is then already known to the asker).

An authenticated member can stall only itself: MAX_PER_SENDER = 4 connections, each holding at
most one of its own 32 quota slots while it waits up to RECORD_TIMEOUT_S for a record.

A sender that gets no answer (the port is closed, a firewall, the channel busy, an older
peer) falls back to libp2p streams for those frames; duplicates are refused by the replay
guard.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable

import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger("gossiplearn.bulk")

BULK_PROTOCOL = "/gossiplearn/bulk/1.0.0"
MAGIC = b"GLB2"  # GLB1 (round v2) had no hello record and answered before authenticating
GROUP_BYTES = 16
KEY_BYTES = 32
SALT_BYTES = 32
HEADER_BYTES = len(MAGIC) + GROUP_BYTES + 2 * KEY_BYTES + SALT_BYTES  # 116
TAG_BYTES = 16
LENGTH_BYTES = 4
#: The hello record: length prefix and the tag of an empty plaintext.
HELLO_BYTES = LENGTH_BYTES + TAG_BYTES  # 20
#: What the receiver reads before it decides anything: 116 + 20 = 136 bytes.
OPENING_BYTES = HEADER_BYTES + HELLO_BYTES
ACK = b"\x01"
_PERSON = b"gossiplearn.blk1"

#: From a connection's arrival to its header and hello read. An honest sender writes both (136
#: bytes) in one go right after connecting, so they arrive one network delay after the TCP
#: handshake, with no round trip in between: 2 s is over 10x a 150 ms intercontinental delay.
FIRST_RECORD_TIMEOUT_S = 2.0
#: How long a connection for our current group may wait for that group's roster (its keys).
#: The sender knew the roster before it connected; we learn it from the same READY/ROSTER
#: frames, but our round machine may still be busy (masking 10M elements takes ~1 s).
KEY_WAIT_S = 10.0
#: Between two records of an authenticated connection (a stalled sender gives its slot back).
RECORD_TIMEOUT_S = 30.0
#: Connections not authenticated yet, all senders together. Honest ones overlap only while we
#: wait for our roster: then each other member of the round may have its PART connection
#: waiting (REDUCED ones come after our PARTs, which need the roster), at most 15 in a group
#: of 16 (round.group_size <= 16); 32 is twice that, and bounds a stranger to 32 sockets.
MAX_UNAUTHENTICATED = 32
#: Authenticated connections of one member at once. An honest member sends us a round's
#: streamed PART and REDUCED frames on one connection at a time (its engine queues them per
#: peer; a connection lingers a second for the next frames): 1, or 2 while an earlier round's
#: connection still drains; 4 leaves room, and bounds a member stalling its own connections
#: to 4 of its 32 quota slots.
MAX_PER_SENDER = 4
#: Salts of authenticated connections remembered (32 bytes each: 128 KiB), so that a replayed
#: connection is refused. A round brings us one connection per other member, a few if its
#: frames pause for over a second (say 2: 30 in a group of 16), so this covers the last 136
#: rounds at least; a replay of an older round's
#: connection names a group that is not ours any more and is refused anyway.
SEEN_SALTS = 4096

#: (group, sender, timeout_s) -> the pair key we share with ``sender`` in ``group``, or None
#: if ``group`` is not the round we are in or ``sender`` is not a member of it.
KeySource = Callable[[bytes, bytes, float], Awaitable[bytes | None]]
#: (sender, read) -> whether a frame was queued: takes a slot of the sender's frame quota,
#: awaits ``read()`` for the frame (None: no more) and queues it for the round machine.
Deliver = Callable[[bytes, Callable[[], Awaitable[bytes | None]]], Awaitable[bool]]

#: Why a connection was closed (``BulkChannel.refusals``; metric gossiplearn_bulk_refused).
REFUSAL_REASONS = (
    "busy",  # MAX_UNAUTHENTICATED connections were waiting to authenticate
    "timeout",  # no header and hello within FIRST_RECORD_TIMEOUT_S
    "header",  # not a header and hello (or EOF before their 136 bytes), or not addressed to us
    "no_round",  # not our current round, or the sender is not a member of it
    "auth",  # the hello does not open under the pair key (or is not a hello)
    "replayed",  # the salt of a connection that authenticated before
    "sender_cap",  # the sender had MAX_PER_SENDER authenticated connections
    "record",  # a later record is too long, does not open, or is late
    "no_frame",  # authenticated, then EOF before any frame
)


class BulkError(Exception):
    """The other side broke the bulk channel's rules (the connection is closed)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


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
        raise BulkError("header", "not a bulk channel header")
    at = len(MAGIC)
    group = header[at : at + GROUP_BYTES]
    at += GROUP_BYTES
    sender = header[at : at + KEY_BYTES]
    recipient = header[at + KEY_BYTES : at + 2 * KEY_BYTES]
    return group, sender, recipient


class Sealer:
    """Seals the records of one connection, in order (the first one: ``hello()``)."""

    def __init__(self, pair_key: bytes, header: bytes) -> None:
        self._aead = AESGCM(record_key(pair_key, header))
        self._index = 0

    def seal(self, frame: bytes) -> bytes:
        sealed = self._aead.encrypt(_nonce(self._index), frame, None)
        self._index += 1
        return sealed

    def hello(self) -> bytes:
        """Record 0 with its length prefix: proves the sender holds the pair key."""
        sealed = self.seal(b"")
        return len(sealed).to_bytes(LENGTH_BYTES, "big") + sealed


class Opener:
    """Opens the records of one connection, in order; any failure is final."""

    def __init__(self, pair_key: bytes, header: bytes) -> None:
        self._aead = AESGCM(record_key(pair_key, header))
        self._index = 0

    def open(self, sealed: bytes | bytearray) -> bytes:
        try:
            frame = self._aead.decrypt(_nonce(self._index), sealed, None)
        except InvalidTag:
            raise BulkError(
                "auth" if self._index == 0 else "record",
                f"record {self._index} does not open under the pair key",
            ) from None
        self._index += 1
        return frame

    def hello(self, record: bytes | bytearray) -> None:
        """Check record 0 (length prefix included): an empty plaintext under the pair key."""
        if int.from_bytes(record[:LENGTH_BYTES], "big") != TAG_BYTES:
            raise BulkError("auth", "the first record is not a hello")
        if self.open(record[LENGTH_BYTES:]) != b"":
            raise BulkError("auth", "the first record is not a hello")


async def _receive_exactly(
    sock: trio.socket.SocketType, count: int, *, at_start: bool, reason: str = "record"
) -> bytearray | None:
    """``count`` bytes; None on a clean EOF before the first byte if ``at_start``; an EOF
    anywhere else is a BulkError(``reason``)."""
    buffer = bytearray(count)
    view = memoryview(buffer)
    filled = 0
    while filled < count:
        got = await sock.recv_into(view[filled:], count - filled)
        if not got:
            if at_start and filled == 0:
                return None
            raise BulkError(reason, f"EOF after {filled} of {count} bytes")
        filled += got
    return buffer


class BulkChannel:
    """One peer's bulk channel: a TCP listener for incoming frames, and a sender."""

    #: The defence against starvation (round v3): a connection must authenticate (its hello
    #: opens) before anything is counted against the member its header names. Only the tests
    #: that show the attack succeeding without it switch it off; then, as in round v2, the
    #: header alone makes the connection the member's, and its first record is awaited inside
    #: the member's frame quota.
    authenticate_first = True

    def __init__(
        self,
        me: bytes,
        keys: KeySource,
        deliver: Deliver,
        *,
        max_record_bytes: int,
        max_unauthenticated: int = MAX_UNAUTHENTICATED,
        max_per_sender: int = MAX_PER_SENDER,
    ) -> None:
        self.me = me
        self._keys = keys
        self._deliver = deliver
        self.max_record_bytes = max_record_bytes + TAG_BYTES
        self.max_unauthenticated = max_unauthenticated
        self.max_per_sender = max_per_sender
        self.port: int | None = None
        self._unauthenticated = 0
        self._by_sender: Counter[bytes] = Counter()  # authenticated connections now
        self._seen_salts: OrderedDict[bytes, None] = OrderedDict()
        #: Connections closed without (all) their frames, by reason (REFUSAL_REASONS).
        self.refusals: Counter[str] = Counter()
        self.frames_in = 0

    @property
    def refused(self) -> int:
        return sum(self.refusals.values())

    def unauthenticated(self) -> int:
        """Connections waiting to authenticate now."""
        return self._unauthenticated

    def authenticated(self, sender: bytes) -> int:
        """Authenticated connections of ``sender`` now."""
        return self._by_sender.get(sender, 0)

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
            if self._unauthenticated >= self.max_unauthenticated:
                self.refusals["busy"] += 1
                return
            try:
                await self._receive(stream)
            except (BulkError, OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                reason = exc.reason if isinstance(exc, BulkError) else "record"
                self.refusals[reason] += 1
                log.debug("bulk connection closed: %r", exc)

    async def _receive(self, stream: trio.SocketStream) -> None:
        sock = stream.socket
        self._unauthenticated += 1
        try:
            sender, opener = await self._authenticate(sock)
        finally:
            self._unauthenticated -= 1
        # Authenticated (or, without the defence, merely named): the sender's from here on.
        if self._by_sender[sender] >= self.max_per_sender:
            raise BulkError("sender_cap", f"{self.max_per_sender} connections already")
        self._by_sender[sender] += 1
        try:
            delivered = await self._receive_frames(sock, sender, opener)
        finally:
            self._by_sender[sender] -= 1
            if not self._by_sender[sender]:
                del self._by_sender[sender]
        if not delivered:
            raise BulkError("no_frame", "EOF before the first frame")
        await stream.send_all(ACK)

    async def _authenticate(self, sock: trio.socket.SocketType) -> tuple[bytes, Opener]:
        """Read the header and the hello, then check them: (sender, opener of its records).
        Nothing here depends on what the header says before all 136 bytes are in, and every
        refusal is the same silent close."""
        first = OPENING_BYTES if self.authenticate_first else HEADER_BYTES
        try:
            with trio.fail_after(FIRST_RECORD_TIMEOUT_S):
                opening = await _receive_exactly(sock, first, at_start=False, reason="header")
        except trio.TooSlowError:
            raise BulkError("timeout", "no header and hello in time") from None
        assert opening is not None
        header, hello = bytes(opening[:HEADER_BYTES]), bytes(opening[HEADER_BYTES:])
        group, sender, recipient = parse_header(header)
        if recipient != self.me or sender == self.me:
            raise BulkError("header", "addressed to another recipient")
        pair_key = await self._keys(group, sender, KEY_WAIT_S)
        if pair_key is None:
            raise BulkError("no_round", "no round with that group and sender")
        opener = Opener(pair_key, header)
        if not self.authenticate_first:
            return sender, opener
        opener.hello(hello)
        salt = header[-SALT_BYTES:]
        if salt in self._seen_salts:
            raise BulkError("replayed", "a connection with this salt authenticated before")
        self._seen_salts[salt] = None
        if len(self._seen_salts) > SEEN_SALTS:
            self._seen_salts.popitem(last=False)
        return sender, opener

    async def _receive_frames(
        self, sock: trio.socket.SocketType, sender: bytes, opener: Opener
    ) -> int:
        """Queue the connection's frames for the round machine, each in a slot of the
        sender's quota; returns how many."""
        limit = self.max_record_bytes
        unchecked_hello = not self.authenticate_first

        async def read() -> bytes | None:
            nonlocal unchecked_hello
            with trio.fail_after(RECORD_TIMEOUT_S):
                if unchecked_hello:  # round v2's order: awaited in a slot of the quota
                    record = await _receive_exactly(sock, HELLO_BYTES, at_start=False)
                    assert record is not None
                    opener.hello(record)
                    unchecked_hello = False
                prefix = await _receive_exactly(sock, LENGTH_BYTES, at_start=True)
                if prefix is None:
                    return None
                length = int.from_bytes(prefix, "big")
                if not TAG_BYTES <= length <= limit:
                    raise BulkError("record", f"record of {length} bytes (limit {limit})")
                sealed = await _receive_exactly(sock, length, at_start=False)
            assert sealed is not None
            return opener.open(sealed)

        delivered = 0
        while await self._deliver(sender, read):
            delivered += 1
            self.frames_in += 1
        return delivered

    # ---- sending ----

    async def send(
        self,
        address: tuple[str, int],
        group: bytes,
        recipient: bytes,
        pair_key: bytes,
        frames: list[bytes],
        connect_timeout_s: float = math.inf,
        progress_timeout_s: float = math.inf,
        more: Callable[[], Awaitable[list[bytes]]] | None = None,
    ) -> None:
        """Send ``frames`` to ``recipient`` at ``address``; returns once it acknowledged them
        all (raises otherwise: the caller falls back to libp2p). The TCP connect is given up
        after ``connect_timeout_s``, and each later step (writing a record, the answer) after
        ``progress_timeout_s`` without progress: however slow the link, a transfer that moves
        goes on. ``more``: awaited once the frames are written, for frames to write next on
        the same connection (a streamed round's next shards), until it returns none; the
        caller bounds how long it waits (the receiver gives a record RECORD_TIMEOUT_S)."""
        if not frames:
            raise ValueError("nothing to send: the receiver answers only after a frame")
        header = make_header(group, self.me, recipient)
        sealer = Sealer(pair_key, header)
        with trio.fail_after(connect_timeout_s):
            stream = await trio.open_tcp_stream(*address)
        async with stream:
            with trio.fail_after(progress_timeout_s):
                await stream.send_all(header + sealer.hello())
            while frames:
                for frame in frames:
                    sealed = sealer.seal(frame)
                    with trio.fail_after(progress_timeout_s):
                        await stream.send_all(len(sealed).to_bytes(4, "big"))
                        await stream.send_all(sealed)
                frames = await more() if more is not None else []
            await stream.send_eof()
            with trio.fail_after(progress_timeout_s):
                answer = await stream.receive_some(1)
            if answer != ACK:
                raise BulkError("no_ack", "the receiver did not acknowledge the frames")


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
