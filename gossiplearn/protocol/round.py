"""Matchmaking and the secure averaging round, as one sans-I/O state machine per peer.

A :class:`Node` takes events and returns actions, like h11: ``receive(frame, now_ms)`` for a
frame that arrived, ``tick(now_ms)`` when time has passed, ``start_round(...)`` to invite
neighbours, ``peer_unreachable(...)`` when the transport could not deliver to a peer. It returns :class:`Send` (a signed frame for a peer), :class:`Wake` (call ``tick``
at this time), and outcomes (:class:`RoundFinished`, :class:`RoundAborted`,
:class:`RoundCancelled`, :class:`MessageRefused`). It never does I/O, never reads a clock and
never draws randomness of its own: the caller injects ``now_ms`` and an ``rng``, so a test can
replay a round exactly, the in-memory network can run a thousand of them, and the daemon drives
the same code over libp2p streams.

The round (see DESIGN.md, "The secure averaging round"):

1. Matchmaking. The initiator sends INVITE to up to k-1 neighbours; each idle one answers
   ACCEPT with a fresh X25519 key, a busy one BUSY. With fewer than 3 members the initiator
   sends CANCEL, otherwise ROSTER with every member's signed ACCEPT frame, which each member
   verifies itself (so the initiator cannot substitute an ephemeral key).
2. Weight pre-pass: members exchange pairwise-masked weights (Z/2^64); everyone learns W only.
3. Masked reduce-scatter: member i encodes (w_i / W) * x_i in Z/2^32, adds its pairwise masks,
   and sends part p of the result to member p as signed shards.
4. Reduce and all-gather: member p sums the parts it got (the masks cancel) and sends the
   reduced part to every member, which joins and decodes them: the weighted average.
5. Abort: a missed deadline or an invalid message makes a member send ABORT to the group and
   drop the round's state. Nothing unmasked was ever sent, so an aborted round leaks nothing.

A member that sends well-formed, validly signed WEIGHT_SHARE, PART or REDUCED frames with
random values cannot be caught frame by frame: masked values look random anyway. Two
deterministic plausibility checks on the unmasked sums, which every honest member holds
bit-identically, catch it instead: W must lie in [own weight + (m - 1), m * (2^32 - 1)] (each
weight is in [1, 2^32)), else "bad_total_weight"; every element of the decoded average must be
finite with |x| <= ``RoundConfig.max_abs_average``, else "implausible_average". Random garbage
fails them almost surely, and one honest member's abort stops the round for all (the others
cannot finish without its parts). A member that sends small, plausible garbage still skews the
average undetected: catching that needs verifiable aggregation, which this protocol lacks.
"""

from __future__ import annotations

import enum
import random
from collections import OrderedDict
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from gossiplearn.crypto.agreement import (
    EphemeralKey,
    KeyAgreementError,
    derive_pair_seed,
    shared_secret,
)
from gossiplearn.crypto.identity import Identity
from gossiplearn.crypto.masks import apply_pairwise_masks
from gossiplearn.crypto.ring import DEFAULT_FRAC_BITS, RING32, decode, encode
from gossiplearn.protocol.envelope import (
    DEFAULT_LIMITS,
    GROUP_ID_BYTES,
    Envelope,
    Limits,
    decode_envelope,
    encode_envelope,
    verify_envelope,
)
from gossiplearn.protocol.errors import ProtocolError
from gossiplearn.protocol.messages import (
    MAX_GROUP,
    MIN_GROUP,
    Abort,
    Accept,
    Busy,
    Cancel,
    Invite,
    Message,
    Part,
    Reduced,
    Roster,
    WeightShare,
)
from gossiplearn.protocol.replay import ReplayGuard, SequenceCounter, sequence_start
from gossiplearn.protocol.shards import MAX_SHARD_BYTES, Shard, join_shards, split_shards

_MASK_LABEL = b"mask"
_WEIGHT_LABEL = b"weight"
_RING_BYTES = 4  # uint32 ring elements
_MAX_WEIGHT = (1 << 32) - 1  # each member's weight is in [1, 2^32), see set_contribution
_REMEMBERED_GROUPS = 1024
_ROSTER_GRACE_MS = 3_000  # a member's wait for ROSTER beyond the invite timeout


class RoundUsageError(RuntimeError):
    """The caller asked something the machine cannot do now (our bug, not a peer's)."""


@dataclass(frozen=True)
class RoundConfig:
    """Round parameters every member of a network must share (frac_bits) or may choose."""

    #: k: the initiator invites up to k-1 neighbours. Groups are 3..k; 2 is impossible.
    max_group_size: int = 4
    frac_bits: int = DEFAULT_FRAC_BITS
    #: How long an initiator waits for ACCEPT/BUSY before closing the roster.
    invite_timeout_ms: int = 2_000
    #: The whole round, from INVITE to the average, must finish within this.
    round_timeout_ms: int = 60_000
    shard_bytes: int = MAX_SHARD_BYTES
    #: A decoded average with any element beyond +-this (or not finite) aborts the round as
    #: "implausible_average". Garbage sent by a member decodes roughly uniformly over the
    #: ring's range (+-2^(31 - frac_bits), +-2048 at f=20), so a part of even a few elements
    #: exceeds 64 almost surely, while real model weights are far smaller. Must be below that
    #: range, or the check could never fire.
    max_abs_average: float = 64.0

    def __post_init__(self) -> None:
        if not MIN_GROUP <= self.max_group_size <= MAX_GROUP:
            raise ValueError(f"max_group_size must be in [{MIN_GROUP}, {MAX_GROUP}]")
        if not 0 < self.invite_timeout_ms < self.round_timeout_ms:
            raise ValueError("need 0 < invite_timeout_ms < round_timeout_ms")
        if not 0 < self.shard_bytes <= MAX_SHARD_BYTES:
            raise ValueError(f"shard_bytes must be in (0, {MAX_SHARD_BYTES}]")
        ring_range = (RING32.max_int + 1) / 2.0**self.frac_bits
        if not 0 < self.max_abs_average < ring_range:
            raise ValueError(
                f"max_abs_average must be in (0, {ring_range:g}), the ring's range at "
                f"frac_bits={self.frac_bits}"
            )


@dataclass(frozen=True)
class Contribution:
    """What this peer brings to its next round: its backbone vector and weight."""

    vector: np.ndarray  # float32, 1-D; a private copy
    weight: int  # e.g. the local sample count; >= 1
    schema_hash: bytes  # 32 bytes naming the backbone's layout; members must agree


# ---- actions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Deliver ``frame`` (a signed envelope) to the peer whose public key is ``to``."""

    to: bytes
    frame: bytes
    kind: str  # the message type, for routing and accounting without decoding


@dataclass(frozen=True)
class Wake:
    """Call :meth:`Node.tick` at (or after) ``at_ms``."""

    at_ms: int


@dataclass
class RoundStats:
    group: bytes
    role: str  # "initiator" or "member"
    started_ms: int
    members: tuple[bytes, ...] = ()
    ended_ms: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    clipped: int = 0  # values clipped by the fixed-point encoding

    @property
    def seconds(self) -> float:
        return (self.ended_ms - self.started_ms) / 1000


@dataclass(frozen=True)
class RoundFinished:
    group: bytes
    members: tuple[bytes, ...]
    average: np.ndarray  # float32, bit-identical at every member
    total_weight: int
    stats: RoundStats


@dataclass(frozen=True)
class RoundAborted:
    group: bytes
    reason: str
    stats: RoundStats


@dataclass(frozen=True)
class RoundCancelled:
    """The round never started (too few accepted, or the initiator cancelled)."""

    group: bytes
    reason: str
    stats: RoundStats


@dataclass(frozen=True)
class MessageRefused:
    """A frame dropped without effect; ``reason`` is a stable code for metrics."""

    reason: str
    sender: bytes | None
    detail: str = ""


Action = Send | Wake | RoundFinished | RoundAborted | RoundCancelled | MessageRefused


class _Abort(Exception):
    """Internal: the current group must abort with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---- per-group state ------------------------------------------------------------------------


class _Phase(enum.Enum):
    INVITING = "inviting"  # initiator: waiting for ACCEPT/BUSY
    AWAIT_ROSTER = "await_roster"  # member: accepted, waiting for ROSTER/CANCEL
    RUNNING = "running"  # roster known: weights, parts, reduced parts


@dataclass
class _ShardSet:
    """Shards of one vector piece from one sender, bounded by the piece's expected size."""

    expected_length: int
    shards: dict[int, Shard] = field(default_factory=dict)
    total: int | None = None
    received_elements: int = 0

    def add(self, shard: Shard, what: str) -> None:
        if shard.dtype != "u4":
            raise _Abort(f"bad_{what}_dtype")
        if self.total is not None and shard.total != self.total:
            raise _Abort(f"inconsistent_{what}_shards")
        if shard.index in self.shards:
            raise _Abort(f"duplicate_{what}_shard")
        self.received_elements += shard.length
        if self.received_elements > self.expected_length:
            raise _Abort(f"oversized_{what}")
        self.total = shard.total
        self.shards[shard.index] = shard

    @property
    def complete(self) -> bool:
        return self.total is not None and len(self.shards) == self.total

    def join(self, what: str) -> np.ndarray:
        try:
            return join_shards(self.shards.values(), dtype="u4", length=self.expected_length)
        except ProtocolError:
            raise _Abort(f"bad_{what}") from None


@dataclass
class _Group:
    id: bytes
    role: str
    initiator: bytes
    invite: Invite
    deadline_ms: int
    ephemeral: EphemeralKey
    contribution: Contribution
    stats: RoundStats
    phase: _Phase
    my_accept_frame: bytes
    # initiator, while inviting; member, until the roster: the matchmaking deadline
    invite_deadline_ms: int = 0
    invitees: tuple[bytes, ...] = ()
    accepts: dict[bytes, tuple[bytes, Accept]] = field(default_factory=dict)
    declined: set[bytes] = field(default_factory=set)
    # member, before the roster: verified envelopes of this group, replayed after it
    early: list[tuple[Envelope, int]] = field(default_factory=list)
    early_bytes: int = 0
    # once the roster is known
    members: tuple[bytes, ...] = ()
    index: int = -1
    mask_seeds: dict[int, bytes] = field(default_factory=dict)
    weight_seeds: dict[int, bytes] = field(default_factory=dict)
    weight_shares: dict[int, int] = field(default_factory=dict)
    total_weight: int | None = None
    bounds: list[tuple[int, int]] = field(default_factory=list)
    parts: dict[int, _ShardSet] = field(default_factory=dict)  # sender index -> my part
    own_part: np.ndarray | None = None
    reduced: dict[int, _ShardSet] = field(default_factory=dict)  # part index -> reduced part
    own_reduced: np.ndarray | None = None

    def participants(self) -> tuple[bytes, ...]:
        """Everyone this member would tell about an abort."""
        if self.members:
            return self.members
        if self.role == "initiator":
            return self.invitees
        return (self.initiator,)


def part_bounds(length: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges splitting ``length`` elements into ``parts`` pieces."""
    cuts = [p * length // parts for p in range(parts + 1)]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


# ---- the machine ----------------------------------------------------------------------------


class Node:
    """One peer's matchmaking and round state machine. At most one group at a time."""

    def __init__(
        self,
        identity: Identity,
        config: RoundConfig | None = None,
        *,
        rng: random.Random | None = None,
        now_ms: int = 0,
        admitted: Container[bytes] | None = None,
        replay: ReplayGuard | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.identity = identity
        self.public_key = identity.public_key
        self.config = config or RoundConfig()
        self._rng = rng or random.SystemRandom()
        self._admitted = admitted
        self._replay = replay or ReplayGuard()
        self._limits = limits
        self._seq = SequenceCounter(sequence_start(now_ms))
        self._contribution: Contribution | None = None
        self._group: _Group | None = None
        self._ended: OrderedDict[bytes, str] = OrderedDict()  # recent group ids -> outcome

    # ---- inputs from the driver ----

    def set_contribution(self, vector: np.ndarray, weight: int, schema_hash: bytes) -> None:
        """What to bring to the next round. Copied: later changes by the caller are not seen."""
        vector = np.asarray(vector)
        if vector.ndim != 1 or vector.dtype != np.float32:
            raise ValueError("the contribution is a 1-D float32 vector")
        if type(weight) is not int or not 1 <= weight < 1 << 32:
            raise ValueError("weight must be an int in [1, 2^32)")
        if len(schema_hash) != 32:
            raise ValueError("schema_hash has 32 bytes")
        self._contribution = Contribution(vector.copy(), weight, bytes(schema_hash))

    @property
    def busy(self) -> bool:
        return self._group is not None

    @property
    def current_group(self) -> bytes | None:
        return self._group.id if self._group else None

    @property
    def current_round(self) -> tuple[bytes, int, int] | None:
        """(group id, started_ms, deadline_ms) of the group this peer is in, if any."""
        group = self._group
        return (group.id, group.stats.started_ms, group.deadline_ms) if group else None

    def next_deadline(self) -> int | None:
        group = self._group
        if group is None:
            return None
        if group.phase is not _Phase.RUNNING:
            return min(group.invite_deadline_ms, group.deadline_ms)
        return group.deadline_ms

    def start_round(self, candidates: Iterable[bytes], now_ms: int) -> list[Action]:
        """Invite up to k-1 of ``candidates`` (live neighbours), chosen at random."""
        if self._group is not None:
            raise RoundUsageError("already in a group")
        if self._contribution is None:
            raise RoundUsageError("no contribution set")
        pool = sorted({c for c in candidates if c != self.public_key})
        if len(pool) < MIN_GROUP - 1:
            raise RoundUsageError(f"need at least {MIN_GROUP - 1} candidates, got {len(pool)}")
        invitees = tuple(self._rng.sample(pool, min(len(pool), self.config.max_group_size - 1)))
        group_id = self._rng.randbytes(GROUP_ID_BYTES)
        contribution = self._contribution
        invite = Invite(
            members=(self.public_key, *invitees),
            schema_hash=contribution.schema_hash,
            length=contribution.vector.size,
            frac_bits=self.config.frac_bits,
            deadline_ms=now_ms + self.config.round_timeout_ms,
        )
        ephemeral = EphemeralKey.generate(self._rng.randbytes(32))
        accept = Accept(ephemeral.public_key, contribution.schema_hash)
        group = _Group(
            id=group_id,
            role="initiator",
            initiator=self.public_key,
            invite=invite,
            deadline_ms=invite.deadline_ms,
            ephemeral=ephemeral,
            contribution=contribution,
            stats=RoundStats(group_id, "initiator", now_ms),
            phase=_Phase.INVITING,
            my_accept_frame=self._encode(self.public_key, accept, group_id, now_ms),
            invite_deadline_ms=now_ms + self.config.invite_timeout_ms,
            invitees=invitees,
        )
        self._group = group
        actions: list[Action] = [self._send(group, peer, invite, now_ms) for peer in invitees]
        actions.append(Wake(group.invite_deadline_ms))
        return actions

    def receive(self, frame: bytes, now_ms: int, *, from_peer: bytes | None = None) -> list[Action]:
        """A frame arrived (from the authenticated peer ``from_peer``, when the transport knows)."""
        try:
            envelope = decode_envelope(
                frame,
                recipient=self.public_key,
                now_ms=now_ms,
                replay=self._replay,
                limits=self._limits,
                admitted=self._admitted,
                expected_sender=from_peer,
            )
        except ProtocolError as exc:
            return [MessageRefused(exc.reason, from_peer, exc.detail)]
        if envelope.type == Invite.TYPE:
            return self._on_invite(envelope, now_ms)
        group = self._group
        if group is None or envelope.group != group.id:
            reason = "ended_group" if envelope.group in self._ended else "unknown_group"
            return [MessageRefused(reason, envelope.sender, envelope.type)]
        group.stats.bytes_received += len(frame)
        group.stats.frames_received += 1
        actions: list[Action] = []
        try:
            self._dispatch(group, envelope, frame, now_ms, actions)
        except _Abort as abort:
            actions.extend(self._abort(group, abort.reason, now_ms))
        return actions

    def tick(self, now_ms: int) -> list[Action]:
        """Time has passed: close the invitations or abort a round past its deadline."""
        group = self._group
        if group is None:
            return []
        actions: list[Action] = []
        try:
            if now_ms >= group.deadline_ms:
                raise _Abort(f"timeout_{group.phase.value}")
            if group.phase is _Phase.INVITING and now_ms >= group.invite_deadline_ms:
                self._close_invitations(group, now_ms, actions)
            elif group.phase is _Phase.AWAIT_ROSTER and now_ms >= group.invite_deadline_ms:
                raise _Abort("timeout_await_roster")  # the initiator is gone
        except _Abort as abort:
            actions.extend(self._abort(group, abort.reason, now_ms))
        return actions

    def peer_unreachable(self, peer: bytes, group_id: bytes, now_ms: int) -> list[Action]:
        """The transport could not deliver a frame of group ``group_id`` to ``peer`` (or lost
        its connection and could not reach it again).

        An invitee that cannot be reached counts as having declined. A round that needs
        ``peer`` (the initiator whose ROSTER we await, or a member once the roster is known)
        can no longer finish, so it aborts now instead of at its deadline: under churn that
        frees the survivors in milliseconds rather than a round timeout. Anything else,
        including a report about an earlier group, is ignored.
        """
        group = self._group
        if group is None or group.id != group_id or peer == self.public_key:
            return []
        actions: list[Action] = []
        try:
            if group.phase is _Phase.INVITING:
                if peer in group.invitees and peer not in group.declined:
                    group.accepts.pop(peer, None)
                    group.declined.add(peer)
                    if len(group.accepts) + len(group.declined) == len(group.invitees):
                        self._close_invitations(group, now_ms, actions)
            elif group.phase is _Phase.AWAIT_ROSTER:
                if peer == group.initiator:
                    raise _Abort("initiator_unreachable")
            elif peer in group.members:
                raise _Abort("member_unreachable")
        except _Abort as abort:
            actions.extend(self._abort(group, abort.reason, now_ms))
        return actions

    def abort(self, reason: str, now_ms: int) -> list[Action]:
        """Abort the current round (e.g. the daemon is stopping), telling the other members."""
        if self._group is None:
            return []
        return self._abort(self._group, reason, now_ms)

    # ---- matchmaking ----

    def _on_invite(self, envelope: Envelope, now_ms: int) -> list[Action]:
        invite = envelope.body
        assert isinstance(invite, Invite)
        sender = envelope.sender
        refused = self._check_invite(envelope, invite, now_ms)
        if refused:
            return [MessageRefused(refused, sender, "INVITE")]
        if self._group is not None:
            return [self._send_outside_group(sender, Busy("busy"), envelope.group, now_ms)]
        busy_reason = self._cannot_join(invite)
        if busy_reason:
            return [self._send_outside_group(sender, Busy(busy_reason), envelope.group, now_ms)]
        contribution = self._contribution
        assert contribution is not None
        ephemeral = EphemeralKey.generate(self._rng.randbytes(32))
        accept = Accept(ephemeral.public_key, invite.schema_hash)
        accept_frame = self._encode(sender, accept, envelope.group, now_ms)
        group = _Group(
            id=envelope.group,
            role="member",
            initiator=sender,
            invite=invite,
            deadline_ms=invite.deadline_ms,
            ephemeral=ephemeral,
            contribution=contribution,
            stats=RoundStats(envelope.group, "member", now_ms),
            phase=_Phase.AWAIT_ROSTER,
            my_accept_frame=accept_frame,
            invite_deadline_ms=min(now_ms + self._roster_wait_ms(), invite.deadline_ms),
        )
        self._group = group
        return [
            self._record_send(group, Send(sender, accept_frame, Accept.TYPE)),
            Wake(group.invite_deadline_ms),
        ]

    def _roster_wait_ms(self) -> int:
        # The initiator sends ROSTER or CANCEL by its invite timeout (a network-wide setting,
        # like frac_bits); waiting longer than that plus a grace only means it is gone.
        return self.config.invite_timeout_ms + _ROSTER_GRACE_MS

    def _check_invite(self, envelope: Envelope, invite: Invite, now_ms: int) -> str | None:
        """Why this INVITE is malformed for us (refused silently), or None."""
        if len(envelope.group) != GROUP_ID_BYTES:
            return "bad_invite"
        if invite.members[0] != envelope.sender or self.public_key not in invite.members[1:]:
            return "bad_invite"
        if envelope.group in self._ended or (self._group and self._group.id == envelope.group):
            return "ended_group"
        if not now_ms < invite.deadline_ms <= now_ms + self.config.round_timeout_ms:
            return "bad_invite_deadline"
        if self._admitted is not None and any(
            m not in self._admitted for m in invite.members if m != self.public_key
        ):
            return "not_admitted_member"
        return None

    def _cannot_join(self, invite: Invite) -> str | None:
        """Why an idle peer answers BUSY to a well-formed INVITE, or None to accept."""
        contribution = self._contribution
        if contribution is None:
            return "not_ready"
        if (
            invite.schema_hash != contribution.schema_hash
            or invite.length != contribution.vector.size
        ):
            return "schema_mismatch"
        if invite.frac_bits != self.config.frac_bits:
            return "params_mismatch"
        if len(invite.members) > self.config.max_group_size:
            return "group_too_large"
        return None

    def _on_accept_or_busy(
        self,
        group: _Group,
        envelope: Envelope,
        frame: bytes | None,
        now_ms: int,
        actions: list[Action],
    ) -> None:
        sender = envelope.sender
        if group.phase is not _Phase.INVITING or sender not in group.invitees:
            raise _Abort("unexpected_" + envelope.type.lower())
        if sender in group.accepts or sender in group.declined:
            return  # a second answer changes nothing
        body = envelope.body
        if isinstance(body, Accept) and body.schema_hash == group.invite.schema_hash:
            assert frame is not None  # ACCEPTs are never buffered
            group.accepts[sender] = (frame, body)
        else:
            group.declined.add(sender)
        if len(group.accepts) + len(group.declined) == len(group.invitees):
            self._close_invitations(group, now_ms, actions)

    def _close_invitations(self, group: _Group, now_ms: int, actions: list[Action]) -> None:
        accepted = [peer for peer in group.invitees if peer in group.accepts]
        too_few = 1 + len(accepted) < MIN_GROUP
        reason = "too_few_accepted" if too_few else "roster_closed"
        for peer in group.invitees:
            # Release everyone not in the roster who may hold state for this group: those who
            # accepted (when cancelling) and those whose answer may still be in flight.
            unanswered = peer not in group.accepts and peer not in group.declined
            if unanswered or (too_few and peer in group.accepts):
                actions.append(self._send(group, peer, Cancel(reason), now_ms))
        if too_few:
            actions.append(self._end(group, RoundCancelled, reason, now_ms))
            return
        members = (self.public_key, *accepted)
        roster = Roster(
            members=members,
            accepts=(group.my_accept_frame, *(group.accepts[p][0] for p in accepted)),
            deadline_ms=group.deadline_ms,
        )
        for peer in accepted:
            actions.append(self._send(group, peer, roster, now_ms))
        keys = [group.ephemeral.public_key] + [group.accepts[p][1].ephemeral_key for p in accepted]
        self._begin_round(group, members, keys, now_ms, actions)

    def _on_roster(
        self, group: _Group, envelope: Envelope, now_ms: int, actions: list[Action]
    ) -> None:
        roster = envelope.body
        assert isinstance(roster, Roster)
        if group.phase is not _Phase.AWAIT_ROSTER or envelope.sender != group.initiator:
            raise _Abort("unexpected_roster")
        members = roster.members
        if members[0] != group.initiator or self.public_key not in members:
            raise _Abort("bad_roster")
        if not set(members) <= set(group.invite.members):
            raise _Abort("bad_roster")
        group.members = members  # from here on, aborts reach the whole roster
        group.deadline_ms = min(group.deadline_ms, roster.deadline_ms)
        keys = []
        for i, (member, frame) in enumerate(zip(members, roster.accepts, strict=True)):
            if member == self.public_key:
                if frame != group.my_accept_frame:
                    raise _Abort("roster_altered_my_accept")
                keys.append(group.ephemeral.public_key)
                continue
            try:
                accept = verify_envelope(frame, limits=self._limits, admitted=self._admitted)
            except ProtocolError:
                raise _Abort("bad_roster_accept") from None
            body = accept.body
            if (
                not isinstance(body, Accept)
                or accept.sender != member
                or accept.recipient != group.initiator
                or accept.group != group.id
                or body.schema_hash != group.invite.schema_hash
                or (i == 0 and accept.sender != group.initiator)
            ):
                raise _Abort("bad_roster_accept")
            keys.append(body.ephemeral_key)
        self._begin_round(group, members, keys, now_ms, actions)
        early, group.early = group.early, []
        for buffered, size in early:
            self._dispatch(group, buffered, None, now_ms, actions, size)
            if self._group is not group:
                return

    # ---- the round ----

    def _begin_round(
        self,
        group: _Group,
        members: tuple[bytes, ...],
        ephemeral_keys: Sequence[bytes],
        now_ms: int,
        actions: list[Action],
    ) -> None:
        group.phase = _Phase.RUNNING
        group.members = members
        group.stats.members = members
        actions.append(Wake(group.deadline_ms))  # the initiator's last wake was for invitations
        group.index = members.index(self.public_key)
        for j, (member, key) in enumerate(zip(members, ephemeral_keys, strict=True)):
            if j == group.index:
                continue
            try:
                secret = shared_secret(group.ephemeral.private_key, key)
            except KeyAgreementError:
                raise _Abort("bad_ephemeral_key") from None
            group.mask_seeds[j] = derive_pair_seed(
                secret, group.id, self.public_key, member, _MASK_LABEL
            )
            group.weight_seeds[j] = derive_pair_seed(
                secret, group.id, self.public_key, member, _WEIGHT_LABEL
            )
        length = group.contribution.vector.size
        group.bounds = part_bounds(length, len(members))
        part_length = group.bounds[group.index][1] - group.bounds[group.index][0]
        for j, (start, end) in enumerate(group.bounds):
            if j != group.index:
                group.parts[j] = _ShardSet(part_length)
                group.reduced[j] = _ShardSet(end - start)

        share = np.array([group.contribution.weight], dtype=np.uint64)
        self._mask(share, group.index, group.weight_seeds)
        group.weight_shares[group.index] = int(share[0])
        for j, member in enumerate(members):
            if j != group.index:
                actions.append(self._send(group, member, WeightShare(int(share[0])), now_ms))
        self._progress(group, now_ms, actions)

    def _dispatch(
        self,
        group: _Group,
        envelope: Envelope,
        frame: bytes | None,
        now_ms: int,
        actions: list[Action],
        size: int = 0,
    ) -> None:
        """Route one verified envelope of the current group.

        ``frame`` is its raw bytes (kept for ACCEPTs, which go into the roster verbatim);
        buffered early envelopes are replayed with ``frame=None`` and their ``size``.
        """
        kind = envelope.type
        sender = envelope.sender
        if group.phase is _Phase.RUNNING and sender not in group.members:
            if kind == Accept.TYPE and group.role == "initiator" and sender in group.invitees:
                # Answered after the roster closed: release it rather than let it wait.
                actions.append(self._send(group, sender, Cancel("roster_closed"), now_ms))
            else:
                actions.append(MessageRefused("not_in_group", sender, kind))
            return
        if sender not in group.invite.members:
            # Someone outside the group cannot disturb it: refused, never an abort.
            actions.append(MessageRefused("not_in_group", sender, kind))
            return
        if kind == Abort.TYPE:
            actions.append(self._end(group, RoundAborted, "peer_aborted", now_ms))
            return
        if kind in (Accept.TYPE, Busy.TYPE):
            self._on_accept_or_busy(group, envelope, frame, now_ms, actions)
            return
        if kind == Roster.TYPE:
            self._on_roster(group, envelope, now_ms, actions)
            return
        if kind == Cancel.TYPE:
            if group.phase is _Phase.AWAIT_ROSTER and sender == group.initiator:
                actions.append(self._end(group, RoundCancelled, "initiator_cancelled", now_ms))
                return
            raise _Abort("unexpected_cancel")
        if kind not in (WeightShare.TYPE, Part.TYPE, Reduced.TYPE):
            raise _Abort("unexpected_" + kind.lower())
        if group.phase is _Phase.AWAIT_ROSTER:
            # A faster member may reach us before the roster does: keep it, bounded.
            size = len(frame) if frame is not None else size
            group.early_bytes += size
            if group.early_bytes > self._early_budget(group):
                raise _Abort("too_much_before_roster")
            group.early.append((envelope, size))
            return
        if group.phase is not _Phase.RUNNING:
            raise _Abort("unexpected_" + kind.lower())
        sender_index = group.members.index(sender)
        body = envelope.body
        if isinstance(body, WeightShare):
            known = group.weight_shares.get(sender_index)
            if known is not None and known != body.value:
                raise _Abort("conflicting_weight_share")
            group.weight_shares[sender_index] = body.value
        elif isinstance(body, Part):
            if body.part != group.index:
                raise _Abort("misaddressed_part")
            group.parts[sender_index].add(body.shard, "part")
        elif isinstance(body, Reduced):
            if body.part != sender_index:
                raise _Abort("misattributed_reduced")
            group.reduced[sender_index].add(body.shard, "reduced")
        self._progress(group, now_ms, actions)

    def _early_budget(self, group: _Group) -> int:
        # Everything a member can legitimately send us in a round, plus framing slack.
        return 2 * group.invite.length * _RING_BYTES + len(group.invite.members) * (1 << 20)

    def _progress(self, group: _Group, now_ms: int, actions: list[Action]) -> None:
        """Take every step the data now allows: weights -> parts -> reduce -> average."""
        m = len(group.members)
        if group.total_weight is None:
            if len(group.weight_shares) < m:
                return
            total = sum(group.weight_shares.values()) % (1 << 64)
            # Every weight is in [1, 2^32): a W outside these bounds means a member sent a
            # garbage share (random 64-bit garbage passes with probability ~m * 2^-32).
            if not group.contribution.weight + (m - 1) <= total <= m * _MAX_WEIGHT:
                raise _Abort("bad_total_weight")
            group.total_weight = total
            self._send_parts(group, now_ms, actions)
        if group.own_reduced is None:
            if not all(s.complete for s in group.parts.values()):
                return
            assert group.own_part is not None
            reduced = group.own_part.copy()
            for shard_set in group.parts.values():
                np.add(reduced, shard_set.join("part"), out=reduced)
            group.own_reduced = reduced
            shards = split_shards(reduced, self.config.shard_bytes)
            for j, member in enumerate(group.members):
                if j != group.index:
                    for shard in shards:
                        actions.append(
                            self._send(group, member, Reduced(group.index, shard), now_ms)
                        )
        if not all(s.complete for s in group.reduced.values()):
            return
        pieces = [
            group.own_reduced if j == group.index else group.reduced[j].join("reduced")
            for j in range(m)
        ]
        average = decode(np.concatenate(pieces), group.invite.frac_bits)
        # Garbage from a member decodes to values spread over the whole ring's range; every
        # honest member holds this same average, so all reach the same verdict. (NaN fails
        # the comparison too.)
        if not np.all(np.abs(average) <= self.config.max_abs_average):
            raise _Abort("implausible_average")
        group.stats.ended_ms = now_ms
        self._forget(group, "finished")
        actions.append(
            RoundFinished(group.id, group.members, average, group.total_weight, group.stats)
        )

    def _send_parts(self, group: _Group, now_ms: int, actions: list[Action]) -> None:
        assert group.total_weight is not None
        contribution = group.contribution
        encoded, clipped = encode(
            contribution.vector,
            group.invite.frac_bits,
            scale=contribution.weight / group.total_weight,
        )
        group.stats.clipped = clipped
        self._mask(encoded, group.index, group.mask_seeds)
        for j, (member, (start, end)) in enumerate(zip(group.members, group.bounds, strict=True)):
            if j == group.index:
                group.own_part = encoded[start:end]
                continue
            for shard in split_shards(encoded[start:end], self.config.shard_bytes):
                actions.append(self._send(group, member, Part(j, shard), now_ms))

    def _mask(self, vector: np.ndarray, index: int, seeds: dict[int, bytes]) -> None:
        """Add this member's pairwise masks (the one step the benchmark-only plaintext skips)."""
        apply_pairwise_masks(vector, index, seeds)

    # ---- endings ----

    def _abort(self, group: _Group, reason: str, now_ms: int) -> list[Action]:
        actions: list[Action] = [
            self._send(group, peer, Abort(reason), now_ms)
            for peer in group.participants()
            if peer != self.public_key
        ]
        actions.append(self._end(group, RoundAborted, reason, now_ms))
        return actions

    def _end(
        self,
        group: _Group,
        outcome: type[RoundAborted] | type[RoundCancelled],
        reason: str,
        now_ms: int,
    ) -> RoundAborted | RoundCancelled:
        group.stats.ended_ms = now_ms
        self._forget(group, reason)
        return outcome(group.id, reason, group.stats)

    def _forget(self, group: _Group, outcome: str) -> None:
        if self._group is group:
            self._group = None
        self._ended[group.id] = outcome
        while len(self._ended) > _REMEMBERED_GROUPS:
            self._ended.popitem(last=False)

    # ---- sending ----

    def _encode(self, to: bytes, body: Message, group_id: bytes, now_ms: int) -> bytes:
        return encode_envelope(
            self.identity, self.public_key, to, body, group=group_id, seq=self._seq(), ts=now_ms
        )

    def _send(self, group: _Group, to: bytes, body: Message, now_ms: int) -> Send:
        return self._record_send(
            group, Send(to, self._encode(to, body, group.id, now_ms), body.TYPE)
        )

    @staticmethod
    def _record_send(group: _Group, send: Send) -> Send:
        group.stats.bytes_sent += len(send.frame)
        group.stats.frames_sent += 1
        return send

    def _send_outside_group(self, to: bytes, body: Message, group_id: bytes, now_ms: int) -> Send:
        return Send(to, self._encode(to, body, group_id, now_ms), body.TYPE)
