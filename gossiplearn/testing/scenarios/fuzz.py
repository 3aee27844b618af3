"""Fuzzing a live peer: an admitted peer sends malformed and mutated messages over real streams.

One trio process runs the victim, a real :class:`~gossiplearn.peer.daemon.Daemon` from a
directory made by ``prepare_peers`` (its round interval set so that it never invites), and a
fuzzer, a :class:`~gossiplearn.peer.net.host.Host` with another peer's identity, which the victim
admits. A third prepared peer, the accomplice, is admitted too but never runs: the fuzzer
signs with its key to impersonate it. The fuzzer opens real libp2p streams to the victim and
sends its messages in three phases, one per protocol, so that each refusal is attributed to
the protocol that caused it:

- round (94%): ``batch`` frames per stream, each from a weighted mix of generators: random
  bytes and random msgpack, truncated frames, bit flips and field mutations of valid signed
  envelopes, valid envelopes of every in-round type of protocol v3 (READY, PART, REDUCED,
  CONFIRM, ABORT with a proof, evidence and accused members, ROSTER with its parameters and ring,
  ACCEPT with its weight...) for unknown random groups, malformed INVITEs (groups of 2, not
  naming the victim, a stranger as member, bad deadlines...), exact replays of earlier valid
  frames, envelopes signed by someone other than their sender or the connection's peer, wrong
  recipient, stale timestamps, wrong version (2 among them: round v2's peers), non-canonical
  encodings, unknown types (v2's WEIGHT_SHARE among them), schema-breaking bodies (bad
  transcripts, weights, READY rosters, ABORT proofs and accused lists...) and decoder bombs.
- peers and status (3% each): one frame per stream (those handlers read one frame), from the
  same kinds of generators plus valid envelopes of the wrong type and PEERS with a bad record.
- In every phase, some streams break framing instead: an oversized length prefix (2^31 or
  the limit + 1), EOF inside a frame or inside its header, or a reset inside a frame. The
  complete frames before the break still reach the decoder; the break itself is one message.

Frames that reach the decoder must each be refused exactly once, counted in ``peer.rejected``
(hence ``gossiplearn_rejected_messages_total`` in /metrics) by reason. Broken streams never
reach the decoder; the host counts them in ``counters.handler_errors`` by protocol.

Afterwards: the victim's run task is alive; a PING and a STATUS request over libp2p succeed;
its backbone, model digest and round counters are unchanged; /metrics matches
``peer.rejected``; and it stops cleanly, its stop checkpoint holding the unchanged model.
:func:`run_fuzz` returns a :class:`FuzzReport` (``as_json()``: benchmarks/fuzz_bench.py's
line); tests/peer/net/test_live_fuzz.py runs it with 3,000 messages.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import random
import re
import resource
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import trio

from gossiplearn.crypto.identity import Identity, load_key_file, peer_id_from_public_key
from gossiplearn.peer.config import IDENTITY_FILE, load_config, save_config
from gossiplearn.peer.daemon import Daemon
from gossiplearn.peer.net.host import (
    PEERS_PROTOCOL,
    PING_PROTOCOL,
    ROUND_PROTOCOL,
    STATUS_PROTOCOL,
    Admission,
    Host,
)
from gossiplearn.protocol import (
    DEFAULT_LIMITS,
    GROUP_ID_BYTES,
    VERSION,
    Abort,
    Accept,
    Busy,
    Cancel,
    Confirm,
    Invite,
    Message,
    Part,
    PeerRecord,
    Peers,
    Ready,
    Reduced,
    ReplayGuard,
    Roster,
    SequenceCounter,
    Status,
    decode_envelope,
    sequence_start,
    split_shards,
)
from gossiplearn.protocol.evidence import EquivocationProof
from gossiplearn.protocol.messages import (
    MAX_GROUP,
    MAX_PROOF,
    MAX_REASON,
    MAX_STATEMENT,
    MAX_WEIGHT,
    RING_BITS,
    TRANSCRIPT_BYTES,
)
from gossiplearn.sim.config import SimConfig
from gossiplearn.sim.daemons import prepare_peers
from gossiplearn.testing.scenarios.live import (
    HEADER_BYTES,
    NEVER_S,
    Victim,
    close_stream,
    drain,
    echo_ping,
    now_ms,
    prefixed,
    rss_mb,
    watching_handler_errors,
)

log = logging.getLogger(__name__)

#: The frame size limit each handler reads with (peer/net/: engine.py, discovery.py, runtime.py).
FRAME_LIMITS = {
    ROUND_PROTOCOL: DEFAULT_LIMITS.max_frame_bytes,
    PEERS_PROTOCOL: 1 << 20,
    STATUS_PROTOCOL: 64 * 1024,
}
PHASE_SHARES = {PEERS_PROTOCOL: 0.03, STATUS_PROTOCOL: 0.03}  # round: the rest
BROKEN_KINDS = ("oversized_prefix", "eof_mid_frame", "eof_mid_header", "reset_mid_frame")
BROKEN_EVERY = 25  # at most one stream in this many breaks framing
READY_TIMEOUT_S = 120.0
STREAM_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
REPLAY_POOL = 512

# ---- forging frames ------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A protocol as the fuzzer sees it: what a valid envelope for its handler looks like."""

    protocol: str
    body: Callable[[], Message]
    in_group: bool
    #: The generator whose frames are valid envelopes sent intact (the replay pool's source).
    intact: str


def detach_shard_data(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` with any body shard's data emptied: what an envelope signature covers."""
    body = fields.get("body")
    if isinstance(body, dict) and isinstance(body.get("shard"), dict) and "data" in body["shard"]:
        return {**fields, "body": {**body, "shard": {**body["shard"], "data": b""}}}
    return fields


class Forge:
    """Makes frames: valid signed envelopes, and every kind of broken one."""

    def __init__(
        self, rng: random.Random, victim: bytes, fuzzer: Identity, accomplice: Identity
    ) -> None:
        self.rng = rng
        self.victim = victim
        self.fuzzer = fuzzer
        self.accomplice = accomplice
        self.strangers = [Identity.generate() for _ in range(4)]  # admitted by no one
        self.seq = SequenceCounter(sequence_start(now_ms()))
        self.pools: dict[str, deque[bytes]] = {}  # valid frames sent intact, per protocol
        self.round = Target(ROUND_PROTOCOL, self.group_body, True, "unknown_group")
        self.peers = Target(PEERS_PROTOCOL, self.peers_body, False, "bad_record")
        self.status = Target(STATUS_PROTOCOL, lambda: Status(""), False, "wrong_type")
        # Per target: generator name -> (weight, generator). A generator may return None
        # (nothing to replay yet); the intact generator is used instead.
        mutations = {
            "random_bytes": (10, self.random_bytes),
            "truncated": (8, self.truncated),
            "bit_flip": (14, self.bit_flip),
            "field_mutation": (8, self.field_mutation),
            "replay": (8, self.replay),
            "foreign_signer": (8, self.foreign_signer),
            "wrong_recipient": (4, self.wrong_recipient),
            "stale": (4, self.stale),
        }
        self.generators: dict[Target, dict[str, tuple[int, Callable[[Target], bytes | None]]]] = {
            self.round: {
                **mutations,
                "random_msgpack": (6, self.random_msgpack),
                "unknown_group": (16, self.intact_envelope),
                "malformed_invite": (8, self.malformed_invite),
                "bad_version": (2, self.bad_version),
                "non_canonical": (3, self.non_canonical),
                "unknown_type": (2, self.unknown_type),
                "bad_body": (5, self.bad_body),
                "decoder_bomb": (3, self.decoder_bomb),
            },
            self.peers: {
                **mutations,
                "bad_record": (10, self.intact_envelope),
                "wrong_type": (8, self.wrong_type),
            },
            self.status: {**mutations, "wrong_type": (10, self.wrong_type)},
        }

    # ---- building blocks ----

    def key(self) -> bytes:
        return self.rng.randbytes(32)

    def group(self) -> bytes:
        return self.rng.randbytes(GROUP_ID_BYTES)

    def header(
        self,
        type_: str,
        body: Any,
        *,
        group: bytes = b"",
        sender: bytes | None = None,
        recipient: bytes | None = None,
        ts: int | None = None,
        v: int = VERSION,
    ) -> dict[str, Any]:
        """An envelope's fields in canonical order, from the fuzzer to the victim by default."""
        return {
            "v": v,
            "type": type_,
            "sender": self.fuzzer.public_key if sender is None else sender,
            "recipient": self.victim if recipient is None else recipient,
            "group": group,
            "seq": self.seq(),
            "ts": now_ms() if ts is None else ts,
            "body": body,
        }

    def signed(self, fields: dict[str, Any], signer: Identity | None = None) -> bytes:
        """``fields`` (any keys, values and order) plus "sig", a signature over the rest.

        With canonical fields this is byte for byte what ``encode_envelope`` makes (the
        signature leaves a shard's data out, as the protocol's does).
        """
        signed = msgpack.packb(detach_shard_data(fields), use_bin_type=True)
        signature = (signer or self.fuzzer).sign(signed)
        return msgpack.packb({**fields, "sig": signature}, use_bin_type=True)

    def envelope(
        self,
        target: Target,
        body: Message | None = None,
        signer: Identity | None = None,
        **header: Any,
    ) -> bytes:
        """A signed envelope of ``body`` (default: the target's kind) for the target's handler."""
        body = body or target.body()
        header.setdefault("group", self.group() if target.in_group else b"")
        return self.signed(self.header(body.TYPE, body.to_wire(), **header), signer)

    def reason(self) -> str:
        return self.rng.choice(("timeout", "busy", "x" * self.rng.randrange(MAX_REASON)))

    def transcript(self) -> bytes:
        return self.rng.randbytes(TRANSCRIPT_BYTES)

    def weight(self) -> int:
        return self.rng.choice((1, self.rng.randrange(1, MAX_WEIGHT + 1), MAX_WEIGHT))

    def shard_body(self, kind: type[Part] | type[Reduced]) -> Message:
        values = np.frombuffer(self.rng.randbytes(4 * self.rng.randrange(1, 64)), dtype="<u4")
        shard = split_shards(values)[0]
        part = self.rng.randrange(MAX_GROUP)
        if kind is Reduced:
            return Reduced(self.transcript(), part, self.rng.randbytes(32), shard)
        return Part(self.transcript(), part, shard)

    def roster_body(self) -> Roster:
        """A ROSTER of protocol v3: members, their ACCEPT frames (random here) and the params."""
        members = (self.fuzzer.public_key, self.victim, self.accomplice.public_key)
        accepts = tuple(self.rng.randbytes(self.rng.randrange(1, 300)) for _ in members)
        ring_bits, clip_exponent = self.rng.choice(RING_BITS), self.rng.randrange(33)
        deadline = now_ms() + 30_000
        return Roster(
            members, accepts, self.key(), 100, 20, self.weight(), deadline, ring_bits, clip_exponent
        )

    def statement(self) -> bytes:
        """Bytes a member relays as a statement: a ROSTER signed by the fuzzer, or noise."""
        if self.rng.random() < 0.5:
            return self.envelope(self.round, self.roster_body())
        return self.rng.randbytes(self.rng.randrange(MAX_STATEMENT // 64))

    def proof(self) -> bytes:
        """An ABORT's proof: empty, noise, or a valid equivocation proof against the fuzzer
        or the accomplice (two CONFIRMs of one transcript with different digests)."""
        kind = self.rng.randrange(3)
        if kind == 0:
            return b""
        if kind == 1:
            return self.rng.randbytes(self.rng.randrange(1, 2048))
        cheat = self.rng.choice((self.fuzzer, self.accomplice))
        group, transcript = self.group(), self.transcript()
        statements = [
            self.envelope(self.round, Confirm(transcript, self.key(), ()), cheat, group=group)
            for _ in range(2)
        ]
        return EquivocationProof(*statements).encode()

    def abort_body(self) -> Abort:
        """An ABORT of protocol v3: a transcript (or none), a proof, evidence, accused members."""
        accused = self.rng.sample(
            (self.fuzzer.public_key, self.victim, self.accomplice.public_key),
            self.rng.randrange(4),
        )
        transcript = self.transcript() if self.rng.random() < 0.7 else b""
        evidence = self.statement() if self.rng.random() < 0.3 else b""
        return Abort(transcript, self.reason(), self.proof(), evidence, tuple(accused))

    def group_body(self) -> Message:
        """A valid body of a random in-round type (never INVITE: a valid one may be accepted)."""
        makers: tuple[Callable[[], Message], ...] = (
            lambda: Ready(self.transcript(), self.statement()),
            lambda: self.shard_body(Part),
            lambda: self.shard_body(Reduced),
            self.roster_body,
            lambda: Accept(self.key(), self.key(), self.weight()),
            self.abort_body,
            lambda: Confirm(self.transcript(), self.key(), (self.rng.randbytes(100),)),
            lambda: Cancel(self.reason()),
            lambda: Busy(self.reason()),
        )
        return self.rng.choice(makers)()

    def peers_body(self) -> Message:
        """PEERS with one record of the admitted accomplice that does not verify."""
        key = self.accomplice.public_key
        addrs = (
            f"/ip4/127.0.0.1/tcp/{self.rng.randrange(1, 65536)}/p2p/{self.accomplice.peer_id}",
        )
        if self.rng.random() < 0.5:  # signed, but expired
            return Peers((PeerRecord.create(self.accomplice, key, addrs, 1, now_ms() - 1),))
        return Peers((PeerRecord(key, addrs, 1, now_ms() + 60_000, self.rng.randbytes(64)),))

    def random_value(self, depth: int = 3) -> Any:
        """A random msgpack-encodable value, nested up to ``depth``."""
        kind = self.rng.randrange(9 if depth > 0 else 7)
        if kind == 0:
            return self.rng.randrange(-(1 << 63), 1 << 64)
        if kind == 1:
            return self.rng.random()
        if kind == 2:
            return self.rng.randbytes(self.rng.choice((0, 16, 32, 64, 300)))
        if kind == 3:
            return "".join(
                chr(self.rng.randrange(32, 0x2FF)) for _ in range(self.rng.randrange(20))
            )
        if kind in (4, 5, 6):
            return (None, True, False)[kind - 4]
        if kind == 7:
            return [self.random_value(depth - 1) for _ in range(self.rng.randrange(6))]
        keys: list[Any] = ["v", "type", "sender", "body", "sig", "x", 1, b"k"]
        return {
            self.rng.choice(keys): self.random_value(depth - 1)
            for _ in range(self.rng.randrange(6))
        }

    # ---- generators: each returns one frame for ``target`` ----

    def random_bytes(self, target: Target) -> bytes:
        return self.rng.randbytes(self.rng.choice((0, 1, 3, 9, 64, 200, 700, 2048)))

    def random_msgpack(self, target: Target) -> bytes:
        return msgpack.packb(self.random_value(), use_bin_type=True)

    def intact_envelope(self, target: Target) -> bytes:
        """A valid envelope, refused only by the handler's own checks; kept for replays."""
        frame = self.envelope(target)
        self.pools.setdefault(target.protocol, deque(maxlen=REPLAY_POOL)).append(frame)
        return frame

    def replay(self, target: Target) -> bytes | None:
        pool = self.pools.get(target.protocol)
        return self.rng.choice(pool) if pool else None

    def truncated(self, target: Target) -> bytes:
        frame = self.envelope(target)
        return frame[: self.rng.randrange(len(frame))]

    def mutated(self, target: Target, mutate: Callable[[bytes], bytes]) -> bytes:
        """``mutate`` applied to a valid envelope, until it changes it (flips can cancel out,
        a replaced value can equal the old one: an unchanged envelope may be legitimate)."""
        frame = self.envelope(target)
        while (result := mutate(frame)) == frame:
            pass
        return result

    def bit_flip(self, target: Target) -> bytes:
        def flip(frame: bytes) -> bytes:
            flipped = bytearray(frame)
            for _ in range(self.rng.randint(1, 4)):
                flipped[self.rng.randrange(len(flipped))] ^= 1 << self.rng.randrange(8)
            return bytes(flipped)

        return self.mutated(target, flip)

    def field_mutation(self, target: Target) -> bytes:
        """A valid envelope with one field (of the header or body) replaced, dropped or added."""

        def mutate(frame: bytes) -> bytes:
            fields = msgpack.unpackb(frame, raw=False)
            where = fields["body"] if self.rng.random() < 0.3 and fields["body"] else fields
            name = self.rng.choice(list(where))
            action = self.rng.randrange(3)
            if action == 0:
                where[name] = self.random_value(1)
            elif action == 1:
                del where[name]
            else:
                where[name + "_"] = self.random_value(1)
            return msgpack.packb(fields, use_bin_type=True)

        return self.mutated(target, mutate)

    def foreign_signer(self, target: Target) -> bytes:
        """Signed by someone other than the sender, or sent for someone else."""
        stranger = self.rng.choice(self.strangers)
        accomplice = self.accomplice
        sender, signer = self.rng.choice(
            (
                (self.fuzzer.public_key, stranger),  # signature
                (stranger.public_key, stranger),  # not_admitted
                (self.victim, stranger),  # not_admitted: the victim does not admit itself
                (accomplice.public_key, accomplice),  # sender_mismatch
                (accomplice.public_key, self.fuzzer),  # sender_mismatch
            )
        )
        return self.envelope(target, signer=signer, sender=sender)

    def wrong_recipient(self, target: Target) -> bytes:
        others = (self.key(), self.fuzzer.public_key, self.accomplice.public_key)
        return self.envelope(target, recipient=self.rng.choice(others))

    def stale(self, target: Target) -> bytes:
        skew = self.rng.randrange(60_000, 3_600_000) * self.rng.choice((-1, 1))
        return self.envelope(target, ts=now_ms() + skew)

    def bad_version(self, target: Target) -> bytes:
        return self.envelope(target, v=self.rng.choice((0, VERSION - 1, VERSION + 1, 255)))

    def non_canonical(self, target: Target) -> bytes:
        """Valid content with the header keys in another order, signed as sent."""
        body = target.body()
        fields = self.header(body.TYPE, body.to_wire(), group=self.group())
        names = list(fields)
        while names == list(fields):
            self.rng.shuffle(names)
        return self.signed({name: fields[name] for name in names})

    def unknown_type(self, target: Target) -> bytes:
        type_ = self.rng.choice(("", "invite", "PING", "X" * 16, "WEIGHT_SHARE", "READY2"))
        return self.signed(self.header(type_, {"value": 1}, group=self.group()))

    def bad_body(self, target: Target) -> bytes:
        """A known type whose body breaks its schema (keys, types, sizes, shard consistency)."""
        shard = split_shards(np.arange(4, dtype="<u4"))[0].to_wire()
        members = [self.fuzzer.public_key, self.victim, self.accomplice.public_key]
        abort = Abort(self.transcript(), "r", accused=(self.victim,)).to_wire()
        transcript, key = self.transcript(), self.key()
        roster = self.roster_body().to_wire()
        invite = Invite(tuple(members), key, 100, 20, 1, now_ms() + 30_000).to_wire()
        type_, body = self.rng.choice(
            (
                ("READY", {"transcript": transcript[:31], "roster": b"r"}),  # short transcript
                ("READY", {"transcript": transcript, "roster": b"r" * (MAX_STATEMENT + 1)}),
                ("READY", {"transcript": transcript}),
                ("PART", {"transcript": transcript, "part": 0, "shard": {**shard, "dtype": "f8"}}),
                ("PART", {"transcript": transcript, "part": 0, "shard": {**shard, "index": 1}}),
                ("PART", {"transcript": transcript, "part": 0, "shard": {**shard, "length": 5}}),
                ("PART", {"part": 0, "shard": shard}),  # round v2's PART: no transcript
                ("REDUCED", {"transcript": transcript, "part": 0, "shard": shard}),  # no digest
                ("REDUCED", {"transcript": transcript, "part": MAX_GROUP, "part_digest": key}),
                ("ROSTER", {**roster, "members": members[:2], "accepts": [b"a", b"b"]}),
                ("ROSTER", {**roster, "accepts": [b"a"]}),
                ("ROSTER", {**roster, "max_weight": 0}),
                ("ROSTER", {k: v for k, v in roster.items() if k != "schema_hash"}),  # v2's
                ("ROSTER", {**roster, "ring_bits": 12}),  # not a ring the protocol has
                ("ROSTER", {**roster, "clip_exponent": 33}),
                ("ROSTER", {k: v for k, v in roster.items() if k != "ring_bits"}),  # pre-rings
                ("INVITE", {**invite, "ring_bits": 64}),
                ("INVITE", {k: v for k, v in invite.items() if k != "clip_exponent"}),
                ("ACCEPT", {"ephemeral_key": key[:31], "schema_hash": key, "weight": 1}),
                ("ACCEPT", {"ephemeral_key": key, "schema_hash": key, "weight": 0}),
                ("ACCEPT", {"ephemeral_key": key, "schema_hash": key, "weight": MAX_WEIGHT + 1}),
                ("ACCEPT", {"ephemeral_key": key, "schema_hash": key}),  # round v2's ACCEPT
                ("CONFIRM", {"transcript": transcript, "digest": key, "evidence": [b"e"] * 16}),
                ("ABORT", {"reason": "r"}),  # round v2's ABORT
                ("ABORT", {**abort, "reason": "r" * (MAX_REASON + 1)}),
                ("ABORT", {**abort, "transcript": transcript[:16]}),
                ("ABORT", {**abort, "accused": [b"k" * 31]}),
                ("ABORT", {**abort, "accused": [key] * (MAX_GROUP + 1)}),
                ("ABORT", {**abort, "proof": b"p" * (MAX_PROOF + 1)}),
                ("BUSY", {"reason": b"bytes"}),
            )
        )
        return self.signed(self.header(type_, body, group=self.group()))

    def decoder_bomb(self, target: Target) -> bytes:
        return self.rng.choice(
            (
                b"\x91" * 200 + b"\xc0",  # nested 200 deep
                b"\xdd\xff\xff\xff\xff",  # an array claiming 2^32 - 1 items
                b"\xc6\x7f\xff\xff\xff",  # a bin claiming 2 GiB
                b"\xdc\x10\x00" + b"\xc0" * 4096,  # 4097 objects
                b"\xde\x00\x40" + b"\xa1a\xc0" * 64,  # a map of 64 (repeated) keys
                b"\xd4\x01\x00",  # an ext type
                b"\x81\x01\xc0",  # an int map key
                b"\x89" + b"\xc0" * 18,  # nine nil: nil pairs
            )
        )

    def malformed_invite(self, target: Target) -> bytes:
        """An INVITE the victim must refuse (never one it could accept)."""
        me, victim, accomplice = self.fuzzer.public_key, self.victim, self.accomplice.public_key
        stranger = self.rng.choice(self.strangers).public_key
        group = self.group()
        members: tuple[bytes, ...] = (me, victim, accomplice)
        deadline = now_ms() + 30_000
        variant = self.rng.randrange(8)
        if variant == 0:
            members = (me, victim)  # a group of 2 would leak: schema
        elif variant == 1:
            members = (me, accomplice, stranger)  # does not name the victim: bad_invite
        elif variant == 2:
            members = (accomplice, me, victim)  # initiator is not the sender: bad_invite
        elif variant == 3:
            group = b""  # no group id: bad_invite
        elif variant == 4:
            members = (me, victim, stranger)  # not_admitted_member
        elif variant == 5:
            deadline = now_ms() - self.rng.randrange(1, 60_000)  # bad_invite_deadline
        elif variant == 6:
            deadline = now_ms() + 3_600_000  # beyond any round timeout: bad_invite_deadline
        else:  # more than MAX_GROUP members: schema
            members = (me, victim, *(Identity.generate().public_key for _ in range(MAX_GROUP)))
        invite = Invite(members, self.key(), 100, 20, 1, deadline)
        return self.envelope(target, invite, group=group)

    def wrong_type(self, target: Target) -> bytes:
        """A valid envelope of a type this protocol's handler does not take."""
        body = self.group_body() if self.rng.random() < 0.5 else Status("")
        if target is self.status:
            body = self.group_body() if self.rng.random() < 0.5 else self.peers_body()
        frame = self.envelope(target, body)
        self.pools.setdefault(target.protocol, deque(maxlen=REPLAY_POOL)).append(frame)
        return frame

    def frame(self, target: Target) -> tuple[str, bytes]:
        """One frame from a generator drawn by weight: (generator name, frame)."""
        generators = self.generators[target]
        names = list(generators)
        name = self.rng.choices(names, weights=[generators[n][0] for n in names])[0]
        frame = generators[name][1](target)
        if frame is None:
            name = target.intact
            frame = generators[name][1](target)
        assert frame is not None
        return name, frame

    def broken_tail(self, target: Target, kind: str) -> bytes:
        """Bytes that break framing (never a complete frame)."""
        if kind == "oversized_prefix":
            declared = self.rng.choice((1 << 31, (1 << 32) - 1, FRAME_LIMITS[target.protocol] + 1))
            return declared.to_bytes(HEADER_BYTES, "big") + self.rng.randbytes(64)
        if kind == "eof_mid_header":
            return self.rng.randbytes(self.rng.randint(1, HEADER_BYTES - 1))
        frame = self.envelope(target)  # eof_mid_frame, reset_mid_frame
        return prefixed(frame)[: HEADER_BYTES + self.rng.randrange(len(frame))]


# ---- streams -------------------------------------------------------------------------------


@dataclass
class StreamPlan:
    protocol: str
    frames: list[bytes]  # complete frames: each reaches the decoder
    tail: bytes = b""  # breaks framing
    broken: str | None = None  # which BROKEN_KINDS, if any

    @property
    def payload(self) -> bytes:
        return b"".join(prefixed(frame) for frame in self.frames) + self.tail


@dataclass
class Sent:
    """What the fuzzer sent, per protocol."""

    frames: dict[str, Counter[str]] = field(default_factory=dict)  # generator -> frames
    broken: dict[str, Counter[str]] = field(default_factory=dict)  # kind -> streams
    streams: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # failures of unbroken streams

    def messages(self) -> int:
        counters = [*self.frames.values(), *self.broken.values()]
        return sum(sum(c.values()) for c in counters)


def plan_streams(
    forge: Forge, target: Target, messages: int, batch: int, sent: Sent
) -> Iterator[StreamPlan]:
    """Streams carrying ``messages`` messages for ``target``, counted into ``sent``."""
    frames = sent.frames.setdefault(target.protocol, Counter())
    broken = sent.broken.setdefault(target.protocol, Counter())
    expected_streams = max(1, messages // batch)
    every = max(1, min(BROKEN_EVERY, expected_streams // len(BROKEN_KINDS)))
    index = 0
    while messages > 0:
        kind = None
        if index % every == every // 2:
            kind = BROKEN_KINDS[(index // every) % len(BROKEN_KINDS)]
        # A broken stream carries up to half a batch of frames before its break, except a
        # reset one: a reset may discard what the victim has not read yet.
        count = min(batch, messages)
        if kind is not None:
            count = 0 if kind == "reset_mid_frame" else forge.rng.randint(0, (messages - 1) // 2)
            count = min(count, batch // 2)
        plan = StreamPlan(target.protocol, [])
        for _ in range(count):
            name, frame = forge.frame(target)
            frames[name] += 1
            plan.frames.append(frame)
        if kind is not None:
            plan.tail, plan.broken = forge.broken_tail(target, kind), kind
            broken[kind] += 1
        messages -= count + (kind is not None)
        index += 1
        yield plan


async def send_stream(host: Host, victim: bytes, plan: StreamPlan, sent: Sent) -> None:
    """Send one planned stream; wait for the victim to finish it, except on STATUS (whose
    handler does not always close) and on broken streams (which it resets)."""
    sent.streams[plan.protocol] += 1
    try:
        with trio.fail_after(STREAM_TIMEOUT_S):
            stream: Any = await host.open_stream(victim, plan.protocol)
            await stream.write(plan.payload)
            if plan.broken == "reset_mid_frame":
                await stream.reset()
                return
            if plan.broken is not None or plan.protocol == STATUS_PROTOCOL:
                await stream.close()
                return
            await stream.close_write()
            with contextlib.suppress(EOFError):  # libp2p raises at EOF
                while await stream.read(1 << 16):  # the victim's reply if any, then EOF
                    pass
            await stream.close()
    except Exception as exc:
        if plan.broken is None:  # a broken stream may be reset under our feet
            sent.errors[f"{plan.protocol}:{type(exc).__name__}"] += 1
            log.warning("stream on %s failed: %r", plan.protocol, exc)


# ---- watching the victim -------------------------------------------------------------------


@dataclass
class ModelState:
    backbone: np.ndarray
    digest: str
    status_digest: str | None
    rounds: tuple[int, int, int]


def model_state(peer: Daemon) -> ModelState:
    document = peer.status_document()
    rounds = document["rounds"]
    return ModelState(
        peer.model.get_backbone(),
        peer.model.model_digest(),
        document["model_digest"],
        (rounds["completed"], rounds["aborted"], rounds["cancelled"]),
    )


METRIC_LINE = re.compile(r'^gossiplearn_rejected_messages_total\{reason="([^"]*)"\} (\S+)$', re.M)


def metrics_by_reason(peer: Daemon) -> dict[str, int]:
    text = peer._render_metrics().decode()
    return {reason: int(float(value)) for reason, value in METRIC_LINE.findall(text)}


def victim_state(peer: Daemon, fuzzer_id: str) -> dict[str, int]:
    """Sizes of the victim's per-peer state, to see whether the fuzzing grew it."""
    from libp2p.peer.id import ID

    connections = peer.host.libp2p.get_network().get_connections(ID.from_base58(fuzzer_id))
    streams = [s for c in connections for s in c.muxed_conn.streams.values()]
    return {
        "yamux_streams": len(streams),
        # Opened by the fuzzer and finished by it, but never closed by the victim.
        "yamux_streams_left_open": sum(
            not s.is_initiator and s.recv_closed and not s.send_closed for s in streams
        ),
        "net_streams": sum(len(c.streams) for c in connections),
        "round_replay_keys": len(peer.node._replay),
        "discovery_replay_keys": len(peer._replay),
        "ended_groups": len(peer.node._ended),
        "neighbours": len(peer.table.all()),
        "engine_inbox": peer.engine._inbox.statistics().current_buffer_used,
    }


async def check_alive(host: Host, forge: Forge, victim: bytes) -> dict[str, bool]:
    """A PING echo and a STATUS request answered by the victim, over libp2p."""
    result = {"ping": False, "status": False}
    try:
        with trio.fail_after(10):
            stream: Any = await host.open_stream(victim, PING_PROTOCOL)
            nonce = os.urandom(16)
            await host.send_frame(victim, stream, nonce)
            result["ping"] = await host.receive_frame(victim, stream, 16) == nonce
            await stream.close()
            stream = await host.open_stream(victim, STATUS_PROTOCOL)
            await host.send_frame(victim, stream, forge.envelope(forge.status))
            reply = await host.receive_frame(victim, stream, 1 << 20)
            await stream.close()
        assert reply is not None
        envelope = decode_envelope(
            reply,
            recipient=forge.fuzzer.public_key,
            now_ms=now_ms(),
            replay=ReplayGuard(),
            expected_sender=victim,
        )
        assert isinstance(envelope.body, Status)
        result["status"] = json.loads(envelope.body.json).get("peer_id") == peer_id_from_public_key(
            victim
        )
    except Exception as exc:
        log.warning("liveness check failed: %r", exc)
    return result


# ---- the report ----------------------------------------------------------------------------


@dataclass
class FuzzReport:
    sent: Sent
    #: Per protocol: frames that reached the decoder, and peer.rejected's growth meanwhile.
    expected: dict[str, int]
    counted: dict[str, int]
    #: Per protocol: the host's handler_errors growth (broken streams land here).
    handler_errors: dict[str, int]
    handler_error_kinds: dict[str, int]
    rejected_before: int  # peer.rejected's total when the fuzzing began
    rejected_by_reason: dict[str, int]
    metrics_by_reason: dict[str, int]
    victim_error: str | None
    alive: dict[str, bool]
    model_changes: list[str]
    rounds_joined: int
    stop_seconds: float | None
    state_before: dict[str, int]
    state_after: dict[str, int]
    seconds: float
    fuzz_seconds: float
    peak_rss_mb: float
    rss_growth_mb: float

    @property
    def messages(self) -> int:
        return self.sent.messages()

    @property
    def crashes(self) -> int:
        died = self.victim_error is not None or self.stop_seconds is None
        unexpected = sum(n for k, n in self.handler_error_kinds.items() if k.startswith("unex"))
        return int(died) + int(not all(self.alive.values())) + unexpected

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected_by_reason.values())

    @property
    def uncounted_frames(self) -> dict[str, int]:
        """Per protocol: frames that reached the decoder but are not in peer.rejected."""
        return {p: max(0, n - self.counted.get(p, 0)) for p, n in self.expected.items()}

    @property
    def broken_streams(self) -> dict[str, int]:
        return {p: sum(kinds.values()) for p, kinds in self.sent.broken.items()}

    @property
    def broken_in_metrics(self) -> int:
        """Broken streams counted in /metrics: its rejected total beyond the counted frames."""
        in_metrics = sum(self.metrics_by_reason.values()) - self.rejected_before
        return max(0, in_metrics - sum(self.counted.values()))

    @property
    def uncounted(self) -> int:
        """Refused messages missing from /metrics: uncounted frames, and broken streams."""
        broken = sum(self.broken_streams.values())
        return sum(self.uncounted_frames.values()) + max(0, broken - self.broken_in_metrics)

    def as_json(self) -> dict[str, Any]:
        return {
            "bench": "fuzz",
            "messages": self.messages,
            "crashes": self.crashes,
            "model_changes": len(self.model_changes),
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "rejected_total": self.rejected_total,
            "uncounted": self.uncounted,
            "seconds": round(self.seconds, 1),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "fuzz_seconds": round(self.fuzz_seconds, 1),
            "messages_per_s": round(self.messages / max(self.fuzz_seconds, 1e-9)),
            "rss_growth_mb": round(self.rss_growth_mb, 1),
            "sent_frames": {p: dict(sorted(c.items())) for p, c in self.sent.frames.items()},
            "broken_streams": {p: dict(sorted(c.items())) for p, c in self.sent.broken.items()},
            "streams": dict(self.sent.streams),
            "send_errors": dict(self.sent.errors),
            "frames_reaching_decoder": self.expected,
            "counted": self.counted,
            "uncounted_frames": self.uncounted_frames,
            "handler_errors": self.handler_errors,
            "handler_error_kinds": self.handler_error_kinds,
            "broken_streams_in_metrics": self.broken_in_metrics,
            "metrics_match_rejected": self.metrics_by_reason == self.rejected_by_reason,
            "victim_error": self.victim_error,
            "alive": self.alive,
            "model_changed": self.model_changes,
            "rounds_joined": self.rounds_joined,
            "stop_seconds": self.stop_seconds,
            "victim_state_before": self.state_before,
            "victim_state_after": self.state_after,
        }


# ---- the driver ----------------------------------------------------------------------------


def prepare(work_dir: Path) -> list[Path]:
    """Victim, fuzzer and accomplice directories; the victim never invites nor bootstraps."""
    dirs = prepare_peers(work_dir, SimConfig(peers=3, mode="inproc"))
    config = load_config(dirs[0])
    config.round.interval_s = NEVER_S
    config.peer.bootstrap = []  # the accomplice never runs: no point dialing it
    save_config(dirs[0], config)
    return dirs


def phase_messages(messages: int) -> dict[str, int]:
    shares = {p: max(1, round(messages * s)) for p, s in PHASE_SHARES.items()}
    return {ROUND_PROTOCOL: messages - sum(shares.values()), **shares}


async def send_streams(
    host: Host, victim: Victim, plans: Iterator[StreamPlan], sent: Sent, concurrency: int
) -> None:
    """Send the planned streams, ``concurrency`` at a time; stop early if the victim died."""
    send, receive = trio.open_memory_channel[StreamPlan](concurrency)
    key = victim.peer.identity.public_key

    async def worker(receive: trio.MemoryReceiveChannel[StreamPlan]) -> None:
        async for plan in receive:
            await send_stream(host, key, plan, sent)

    async with trio.open_nursery() as workers, send:
        for _ in range(concurrency):
            workers.start_soon(worker, receive.clone())
        receive.close()
        for plan in plans:
            if victim.done.is_set():
                break
            await send.send(plan)


@dataclass
class Phases:
    """Per protocol: frames that reached the decoder, peer.rejected's growth meanwhile, and
    the host's handler_errors growth (where broken streams land)."""

    expected: dict[str, int] = field(default_factory=dict)
    counted: dict[str, int] = field(default_factory=dict)
    handler_errors: dict[str, int] = field(default_factory=dict)


async def run_phases(
    host: Host, victim: Victim, forge: Forge, messages: int, batch: int, concurrency: int
) -> tuple[Sent, Phases]:
    """One phase per protocol, each drained before the next so its counts are its own."""
    sent, phases = Sent(), Phases()
    for target in (forge.round, forge.peers, forge.status):
        protocol = target.protocol
        rejected, errors, all_errors = (
            victim.rejected(),
            victim.handler_errors(protocol),
            victim.handler_errors(),
        )
        per_stream = batch if protocol == ROUND_PROTOCOL else 1  # the others read one frame
        count = phase_messages(messages)[protocol]
        plans = plan_streams(forge, target, count, per_stream, sent)
        await send_streams(host, victim, plans, sent, concurrency)
        expected = sum(sent.frames[protocol].values())
        broken = sum(sent.broken[protocol].values())
        await drain(
            lambda: victim.rejected() + victim.handler_errors(),
            rejected + all_errors + expected + broken,
            victim.busy,
        )
        phases.expected[protocol] = expected
        phases.counted[protocol] = victim.rejected() - rejected
        phases.handler_errors[protocol] = victim.handler_errors(protocol) - errors
    return sent, phases


def model_changes(
    before: ModelState, after: ModelState, checkpoint_digest: str | None
) -> list[str]:
    """What changed in the victim's model: backbone, digests (live, cached, checkpointed)."""
    changed = {
        "backbone": not np.array_equal(before.backbone, after.backbone),
        "model_digest": before.digest != after.digest,
        "status_model_digest": before.status_digest != after.status_digest,
        # The stop checkpoint re-digests the model it saved.
        "checkpoint_digest": checkpoint_digest != before.digest,
    }
    return [name for name, change in changed.items() if change]


async def fuzz(
    dirs: list[Path], messages: int, seed: int, batch: int, concurrency: int
) -> FuzzReport:
    started = time.perf_counter()
    victim = Victim(dirs[0])
    peer = victim.peer
    fuzzer = load_key_file(dirs[1] / IDENTITY_FILE)
    key = peer.identity.public_key
    forge = Forge(random.Random(seed), key, fuzzer, load_key_file(dirs[2] / IDENTITY_FILE))
    host = Host(fuzzer, ["/ip4/127.0.0.1/tcp/0"], Admission([key]))
    # The victim pings its neighbours and swaps peer records with them: answer like a peer
    # (an echo; no records), so that its own traffic succeeds and stays out of the way.
    host.handle(PING_PROTOCOL, functools.partial(echo_ping, host))
    host.handle(PEERS_PROTOCOL, close_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(victim.run)
        with trio.fail_after(READY_TIMEOUT_S):
            while not (victim.done.is_set() or victim.trained):
                await trio.sleep(0.05)
        if victim.done.is_set():
            raise RuntimeError(f"the victim did not start: {victim.error}")
        before = model_state(peer)
        async with host.run():
            await host.connect(peer.host.addrs()[0])
            state_before = victim_state(peer, fuzzer.peer_id)
            rejected_before = victim.rejected()
            rss_before = rss_mb()
            fuzz_started = time.perf_counter()
            sent, phases = await run_phases(host, victim, forge, messages, batch, concurrency)
            fuzz_seconds = time.perf_counter() - fuzz_started
            alive = await check_alive(host, forge, key)
            alive["run_task"] = not victim.done.is_set()
            state_after = victim_state(peer, fuzzer.peer_id)
            rss_after = rss_mb()
        after = model_state(peer)
        rejected_by_reason, in_metrics = dict(peer.rejected), metrics_by_reason(peer)
        rounds_joined = sum(after.rounds) - sum(before.rounds) + int(peer.node.busy)
        stop_seconds = await victim.stopped_within(STOP_TIMEOUT_S)
        nursery.cancel_scope.cancel()  # a victim that did not stop is cut off here

    return FuzzReport(
        sent=sent,
        expected=phases.expected,
        counted=phases.counted,
        handler_errors=phases.handler_errors,
        handler_error_kinds={},
        rejected_before=rejected_before,
        rejected_by_reason=rejected_by_reason,
        metrics_by_reason=in_metrics,
        victim_error=victim.error,
        alive=alive,
        model_changes=model_changes(before, after, peer.digests.get("model")),
        rounds_joined=rounds_joined,
        stop_seconds=stop_seconds,
        state_before=state_before,
        state_after=state_after,
        seconds=time.perf_counter() - started,
        fuzz_seconds=fuzz_seconds,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        rss_growth_mb=rss_after - rss_before,
    )


def run_fuzz(
    work_dir: Path,
    messages: int,
    *,
    seed: int = 0,
    batch: int = 100,
    concurrency: int = 4,
) -> FuzzReport:
    """Prepare the peers in ``work_dir``, fuzz the victim with ``messages`` messages, report."""
    dirs = prepare(Path(work_dir))
    with watching_handler_errors() as watcher:
        report = trio.run(fuzz, dirs, messages, seed, batch, concurrency)
    report.handler_error_kinds = dict(watcher.kinds)
    return report
