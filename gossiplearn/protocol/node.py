"""One peer's round machine: routing, the (role, phase) table, timers, backoff, contributions.

A :class:`Node` takes events and returns actions, like h11: ``receive(frame, now_ms)`` for a
frame that arrived, ``tick(now_ms)`` when time has passed, ``start_round(...)`` to invite
neighbours, ``peer_unreachable(...)`` when the transport could not deliver to a peer,
``set_contribution(...)`` for what to bring to the next round. It returns the actions of
:mod:`gossiplearn.protocol.events`. It never does I/O, never reads a clock and never draws
randomness of its own: the caller injects ``now_ms`` and an ``rng``, so a test can replay a
round exactly, the in-memory network can run a thousand of them, and the daemon drives the
same code over libp2p.

A round, in three modules: matchmaking.py (INVITE -> ROSTER: a verified group),
aggregation.py (shares, parts, reduce, agreement: the average), and this one, which routes
each verified frame by (role, phase) through :data:`ALLOWED`, keeps the deadlines, and decides
whom to invite and whom to answer:

- **A contribution is sent in at most one round.** Once a contribution reaches the sharing
  step of a round (finished or aborted), it is spent: the node declines invitations
  ("contribution_spent") until the driver sets a different vector (it trains first). So the
  sums of overlapping groups never share an unchanged vector, and differencing them (an
  insider that aborts after seeing the others' reduced parts, then does it again with other
  members) recovers a vector only up to the training steps taken in between.
- **Weights are capped network-wide** (``RoundConfig.max_weight``; 1, equal weights, by
  default). The cap travels in the INVITE and a peer with another one declines.
- **Backoff** (backoff.py): members a round aborts because of are struck; a struck peer is
  neither invited nor answered for an exponentially growing period; a proven equivocator is
  refused until an operator clears it.
- **Deadlines scale** with the backbone and the throughput measured in this node's finished
  rounds, within ``round_timeout_ms``: a held round ends in seconds for a small model.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Container, Iterable

import numpy as np
from blake3 import blake3

from gossiplearn.crypto.agreement import EphemeralKey
from gossiplearn.crypto.identity import Identity
from gossiplearn.protocol.aggregation import (
    PAIRWISE_MASKS,
    Aggregation,
    Contribution,
    Masking,
    Step,
)
from gossiplearn.protocol.backoff import Backoff
from gossiplearn.protocol.config import RoundConfig
from gossiplearn.protocol.endings import Endings
from gossiplearn.protocol.envelope import (
    DEFAULT_LIMITS,
    GROUP_ID_BYTES,
    Envelope,
    Limits,
    decode_envelope,
    encode_envelope,
)
from gossiplearn.protocol.errors import ProtocolError, UnsupportedVersion
from gossiplearn.protocol.events import (
    Action,
    MessageRefused,
    RoundCancelled,
    RoundFault,
    RoundFinished,
    RoundStats,
    RoundUsageError,
    Send,
    Wake,
)
from gossiplearn.protocol.evidence import (
    verify_proof,
)
from gossiplearn.protocol.matchmaking import (
    Invitation,
    RoundParams,
    VerifiedGroup,
    busy_reason,
    invite_refusal,
    propose,
    verify_roster,
)
from gossiplearn.protocol.messages import (
    MIN_GROUP,
    Abort,
    Accept,
    Busy,
    Cancel,
    Invite,
    Message,
    Roster,
)
from gossiplearn.protocol.replay import (
    DEFAULT_FRESHNESS_MS,
    ReplayGuard,
    SequenceCounter,
    sequence_start,
)
from gossiplearn.protocol.states import ALLOWED, Group, Phase
from gossiplearn.protocol.suspicion import Suspicion

_ROSTER_GRACE_MS = 3_000  # a member's wait for ROSTER beyond the invite timeout
_SPENT_REMEMBERED = 64  # digests of spent contributions kept
#: Groups whose ABORT reports arrived before their INVITE (a few rounds' worth).
_EARLY_REPORT_GROUPS = 16
#: A deadline allows this many times the expected transfer time at the measured throughput.
_DEADLINE_SAFETY = 4
_THROUGHPUT_FLOOR = 1_000_000  # bytes/s: a slow measurement never stretches deadlines further


def freshness_ms(config: RoundConfig) -> int:
    """How old (or how far ahead) a message's timestamp may be: 30 s, or half the longest
    round if that is more. A round's frames are signed when their step starts, and those of a
    step that carries the model arrive only once it is transferred: over a slow link (a 40 MB
    backbone's REDUCED parts take 24 s at 10 Mbit/s, shared by three connections, and more
    before the receiver's turn to check them), past 30 s. A round_timeout raised for such
    links (docs/internet.md) widens the window with it, to one of the round's two transfer
    steps with room."""
    return max(DEFAULT_FRESHNESS_MS, config.round_timeout_ms // 2)


def contribution_digest(vector: np.ndarray) -> bytes:
    # Local bookkeeping only (never sent): BLAKE3 hashes a 40 MB backbone in ~10 ms.
    return blake3(
        vector.view(np.uint8).data, derive_key_context="gossiplearn contribution digest"
    ).digest(16)


class Node(Endings):
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
        masking: Masking = PAIRWISE_MASKS,
    ) -> None:
        self.identity = identity
        self.public_key = identity.public_key
        self.config = config or RoundConfig()
        self.backoff = Backoff(self.config.backoff_base_ms, self.config.backoff_max_ms)
        self._safeguards = self.config.safeguards
        self._rng = rng or random.SystemRandom()
        self._admitted = admitted
        self._replay = replay or ReplayGuard(freshness_ms=freshness_ms(self.config))
        self._limits = limits
        self._masking = masking
        self._seq = SequenceCounter(sequence_start(now_ms))
        self._contribution: Contribution | None = None
        self._spent: OrderedDict[bytes, None] = OrderedDict()
        self._group: Group | None = None
        self._ended: OrderedDict[bytes, str] = OrderedDict()  # recent group ids -> outcome
        #: the last rounds' aggregations (statements received), by group id
        self._recent: OrderedDict[bytes, Aggregation] = OrderedDict()
        self.suspicion = Suspicion()
        #: ABORT reports for groups this peer did not know yet (see receive)
        self._early_reports: OrderedDict[bytes, dict[bytes, tuple[bytes, ...]]] = OrderedDict()
        self._throughput = float(self.config.assumed_bytes_per_s)  # bytes/s, measured

    # ---- inputs from the driver ----

    def set_contribution(self, vector: np.ndarray, weight: int, schema_hash: bytes) -> None:
        """What to bring to the next round. Copied: later changes by the caller are not seen.

        A vector already sent in a round stays spent: the node declines rounds until it gets
        a different one.
        """
        vector = np.asarray(vector)
        if vector.ndim != 1 or vector.dtype != np.float32:
            raise ValueError("the contribution is a 1-D float32 vector")
        if type(weight) is not int or not 1 <= weight <= self._weight_limit():
            raise ValueError(f"weight must be an int in [1, max_weight={self.config.max_weight}]")
        if len(schema_hash) != 32:
            raise ValueError("schema_hash has 32 bytes")
        vector = np.ascontiguousarray(vector).copy()
        self._contribution = Contribution(
            vector, weight, bytes(schema_hash), contribution_digest(vector)
        )

    def _weight_limit(self) -> int:
        """The largest weight this node may declare: the network-wide cap."""
        return self.config.max_weight

    @property
    def contribution_fresh(self) -> bool:
        """A contribution is set and was not sent in a round yet."""
        return self._contribution is not None and not self._is_spent(self._contribution)

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

    @property
    def channel_keys(self) -> dict[bytes, bytes]:
        """{member: pair key} of the round in progress once its roster is known (else empty):
        for the driver's own transport to seal this round's frames (see Aggregation)."""
        group = self._group
        if group is None or group.aggregation is None:
            return {}
        return dict(group.aggregation.channel_keys)

    def next_deadline(self) -> int | None:
        """When :meth:`tick` must be called next (None: no round)."""
        group = self._group
        if group is None:
            return None
        if group.phase is Phase.CLOSING:
            return group.closing_until_ms
        if group.aggregation is not None and group.aggregation.pending_work:
            return group.stats.started_ms  # now: shards to mask or send (Aggregation.work)
        if group.phase is not Phase.RUNNING:
            return min(group.invite_deadline_ms, group.deadline_ms)
        return group.deadline_ms

    def round_budget_ms(self, length: int) -> int:
        """The deadline this node gives a round of ``length`` elements, from its start."""
        config = self.config
        if not self._safeguards.scaled_deadlines:
            return config.round_timeout_ms
        budget = config.invite_timeout_ms + self.after_roster_budget_ms(length)
        return int(min(config.round_timeout_ms, budget))

    def after_roster_budget_ms(self, length: int) -> int:
        """What a round still needs once its roster is out: the slack for the remaining
        message steps and 4x the transfer time at the measured throughput. A member caps the
        round's deadline at this from the roster's arrival, whatever the initiator set: an
        initiator that sends the roster and falls silent holds nobody longer."""
        config = self.config
        if not self._safeguards.scaled_deadlines:
            return config.round_timeout_ms
        ring_bytes = self.config.ring_bytes
        transfer_ms = _DEADLINE_SAFETY * 2 * ring_bytes * length * 1000 / self._throughput
        return int(min(config.round_timeout_ms, config.round_slack_ms + transfer_ms))

    def start_round(self, candidates: Iterable[bytes], now_ms: int) -> list[Action]:
        """Invite up to k-1 of ``candidates`` (live neighbours), chosen at random among those
        not backed off or refused."""
        if self._group is not None:
            raise RoundUsageError("already in a group")
        contribution = self._contribution
        if contribution is None:
            raise RoundUsageError("no contribution set")
        if self._is_spent(contribution):
            raise RoundUsageError("contribution_spent: train before the next round")
        pool = sorted(
            {
                c
                for c in candidates
                if c != self.public_key and self.backoff.blocked(c, now_ms) is None
            }
        )
        if len(pool) < MIN_GROUP - 1:
            raise RoundUsageError(
                f"need at least {MIN_GROUP - 1} candidates not backed off, got {len(pool)}"
            )
        invitees = self._choose(pool, now_ms)
        if len(invitees) < MIN_GROUP - 1:
            raise RoundUsageError("need at least 2 candidates that may be grouped together")
        group_id = self._new_group_id()
        params = self._params(contribution)
        assert params is not None
        invite = propose(
            self.public_key,
            invitees,
            params,
            now_ms + self.round_budget_ms(params.length),
        )
        ephemeral = EphemeralKey.generate(self._rng.randbytes(32))
        accept = Accept(ephemeral.public_key, contribution.schema_hash, contribution.weight)
        group = Group(
            id=group_id,
            role="initiator",
            initiator=self.public_key,
            invite=invite,
            deadline_ms=invite.deadline_ms,
            ephemeral=ephemeral,
            contribution=contribution,
            stats=RoundStats(group_id, "initiator", now_ms),
            phase=Phase.INVITING,
            my_accept_frame=self._encode(self.public_key, accept, group_id, now_ms),
            invite_deadline_ms=now_ms + self.config.invite_timeout_ms,
            invitation=Invitation(
                invitees,
                contribution.schema_hash,
                self.config.max_weight if self._safeguards.weight_bounds else None,
            ),
        )
        self._group = group
        actions: list[Action] = [self._send(group, peer, invite, now_ms) for peer in invitees]
        actions.append(Wake(group.invite_deadline_ms))
        return actions

    def _new_group_id(self) -> bytes:
        # Random, never reused: an honest initiator's group id names one round (see
        # evidence.py: a ROSTER's slot is its group id).
        return self._rng.randbytes(GROUP_ID_BYTES)

    def _choose(self, pool: list[bytes], now_ms: int) -> tuple[bytes, ...]:
        """Up to k-1 invitees at random from ``pool``, never two kept apart (nor one kept
        apart from this peer)."""
        order = self._rng.sample(pool, len(pool))
        chosen: list[bytes] = []
        for peer in order:
            if len(chosen) == self.config.max_group_size - 1:
                break
            if not self.backoff.apart((self.public_key, *chosen, peer), now_ms):
                chosen.append(peer)
        return tuple(chosen)

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
        except UnsupportedVersion as exc:
            return self._other_version(exc, from_peer)
        except ProtocolError as exc:
            return [MessageRefused(exc.reason, from_peer, exc.detail)]
        if envelope.type == Invite.TYPE:
            return self._on_invite(envelope, now_ms)
        group = self._group
        if group is None or envelope.group != group.id:
            if envelope.type == Abort.TYPE and envelope.group in self._recent:
                return self._late_abort(self._recent[envelope.group], envelope)
            if envelope.type == Abort.TYPE and envelope.group not in self._ended:
                # An invitee that left before this peer even got its INVITE (an initiator can
                # delay one): keep its report, for the round this peer may still be put in.
                body = envelope.body
                assert isinstance(body, Abort)
                reports = self._early_reports.setdefault(envelope.group, {})
                reports[envelope.sender] = body.accused
                while len(self._early_reports) > _EARLY_REPORT_GROUPS:
                    self._early_reports.popitem(last=False)
            reason = "ended_group" if envelope.group in self._ended else "unknown_group"
            return [MessageRefused(reason, envelope.sender, envelope.type)]
        group.stats.bytes_received += len(frame)
        group.stats.frames_received += 1
        actions: list[Action] = []
        try:
            self._dispatch(group, envelope, frame, now_ms, actions)
        except RoundFault as fault:
            actions.extend(self._abort(group, fault, now_ms))
        return actions

    def tick(self, now_ms: int) -> list[Action]:
        """Time has passed: close the invitations or abort a round past its deadline."""
        group = self._group
        if group is None:
            return []
        actions: list[Action] = []
        if group.phase is Phase.CLOSING:
            if now_ms >= group.closing_until_ms:
                actions.extend(self._end_closing(group, now_ms))
            return actions
        if group.aggregation is not None and group.aggregation.pending_work:
            # The round streams: mask the next shards (and send them once the READYs agreed).
            try:
                self._emit(group, group.aggregation.work(), now_ms, actions)
            except RoundFault as fault:
                actions.extend(self._abort(group, fault, now_ms))
            if self._group is not group:
                return actions
        if (
            now_ms >= group.deadline_ms
            and group.phase is Phase.RUNNING
            and self._safeguards.group_testing
        ):
            # Stuck: report whom this member still waits for, and collect the others' reports.
            assert group.aggregation is not None
            missing = group.aggregation.missing()
            # Tolerance: the initiator counts from when it sent, this member from when it
            # received (a latency later). A deadline cut by half the slack still leaves an
            # honest round its time; one cut by more was the initiator's choice.
            if group.deadline_ms < group.own_deadline_ms - self.config.round_slack_ms // 2:
                # The initiator chose this deadline, shorter than this member would have: it
                # is where the round failed, whoever it waits for (an insider could set one so
                # short that honest members are still sending).
                missing = (group.initiator, *(p for p in missing if p != group.initiator))
            self._start_closing(
                group, "timeout_running", frozenset(missing), missing, now_ms, actions
            )
            return actions
        try:
            if now_ms >= group.deadline_ms:
                raise RoundFault(f"timeout_{group.phase.value}", self._missing(group))
            if group.phase is Phase.INVITING and now_ms >= group.invite_deadline_ms:
                self._close_invitations(group, now_ms, actions)
            elif group.phase is Phase.AWAIT_ROSTER and now_ms >= group.invite_deadline_ms:
                raise RoundFault("timeout_await_roster", (group.initiator,))  # it is gone
        except RoundFault as fault:
            actions.extend(self._abort(group, fault, now_ms))
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
            if group.phase is Phase.INVITING:
                assert group.invitation is not None
                group.invitation.unreachable(peer)
                if group.invitation.answered:
                    self._close_invitations(group, now_ms, actions)
            elif group.phase is Phase.AWAIT_ROSTER:
                if peer == group.initiator:
                    raise RoundFault("initiator_unreachable", (peer,))
            elif group.phase is Phase.CLOSING:
                pass  # the round is over; the reports decide (a crashed member sends none)
            elif peer in group.members:
                raise RoundFault("member_unreachable", (peer,))
        except RoundFault as fault:
            actions.extend(self._abort(group, fault, now_ms))
        return actions

    def abort(self, reason: str, now_ms: int) -> list[Action]:
        """Abort the current round (e.g. the daemon is stopping), telling the other members."""
        if self._group is None:
            return []
        return self._abort(self._group, RoundFault(reason), now_ms)

    def accept_proof(self, proof: bytes) -> bytes:
        """Refuse the peer an encoded equivocation proof convicts (e.g. one kept on disk from
        an earlier run); returns its key. Raises InvalidProof if it proves nothing."""
        peer = verify_proof(proof, self._limits).peer
        if peer != self.public_key:
            self.backoff.refuse(peer)
        return peer

    def clear_refusal(self, peer: bytes) -> bool:
        """An operator cleared ``peer``: no refusal, no backoff. True if it had any."""
        return self.backoff.clear(peer)

    # ---- matchmaking ----

    def _on_invite(self, envelope: Envelope, now_ms: int) -> list[Action]:
        invite = envelope.body
        assert isinstance(invite, Invite)
        sender = envelope.sender
        refused = invite_refusal(
            envelope, self.public_key, now_ms, self.config.round_timeout_ms, self._admitted
        )
        if refused is None and (
            envelope.group in self._ended or (self._group and self._group.id == envelope.group)
        ):
            refused = "ended_group"
        if refused:
            return [MessageRefused(refused, sender, "INVITE")]
        busy = self._decline_reason(invite, sender, now_ms)
        if busy:
            return [self._send_outside_group(sender, Busy(busy), envelope.group, now_ms)]
        contribution = self._contribution
        assert contribution is not None
        ephemeral = EphemeralKey.generate(self._rng.randbytes(32))
        accept = Accept(ephemeral.public_key, invite.schema_hash, contribution.weight)
        accept_frame = self._encode(sender, accept, envelope.group, now_ms)
        own_deadline_ms = now_ms + self.round_budget_ms(invite.length)
        deadline_ms = min(invite.deadline_ms, own_deadline_ms)
        group = Group(
            id=envelope.group,
            role="member",
            initiator=sender,
            invite=invite,
            deadline_ms=deadline_ms,
            ephemeral=ephemeral,
            contribution=contribution,
            stats=RoundStats(envelope.group, "member", now_ms),
            phase=Phase.AWAIT_ROSTER,
            my_accept_frame=accept_frame,
            invite_deadline_ms=min(now_ms + self._roster_wait_ms(), deadline_ms),
            own_deadline_ms=own_deadline_ms,
        )
        # An invitee that left before this peer's INVITE came: if the roster still names it,
        # the initiator put it there, so its report leads to the initiator too.
        early = self._early_reports.pop(envelope.group, {})
        group.reports.update(
            {p: (*r, sender) for p, r in early.items() if p in invite.members and p != sender}
        )
        self._group = group
        return [
            self._record_send(group, Send(sender, accept_frame, Accept.TYPE)),
            Wake(group.invite_deadline_ms),
        ]

    def _decline_reason(self, invite: Invite, sender: bytes, now_ms: int) -> str | None:
        """Why this well-formed INVITE gets BUSY, or None to accept."""
        if self._group is not None:
            return "busy"
        blocked = self.backoff.blocked(sender, now_ms)
        if blocked:
            return blocked
        if any(self.backoff.blocked(m, now_ms) for m in invite.members[1:] if m != self.public_key):
            return "blocked_member"
        if self.backoff.apart(invite.members, now_ms):
            return "blocked_member"
        contribution = self._contribution
        if contribution is not None and self._is_spent(contribution):
            return "contribution_spent"
        return busy_reason(invite, self._params(contribution), self.config.max_group_size)

    def _roster_wait_ms(self) -> int:
        # The initiator sends ROSTER or CANCEL by its invite timeout (a network-wide setting,
        # like frac_bits); waiting longer than that plus a grace only means it is gone.
        return self.config.invite_timeout_ms + _ROSTER_GRACE_MS

    def _params(self, contribution: Contribution | None) -> RoundParams | None:
        if contribution is None:
            return None
        config = self.config
        return RoundParams(
            contribution.schema_hash,
            contribution.vector.size,
            config.frac_bits,
            config.max_weight,
            config.ring_bits,
            config.clip_exponent,
        )

    def _close_invitations(self, group: Group, now_ms: int, actions: list[Action]) -> None:
        invitation = group.invitation
        assert invitation is not None
        too_few = invitation.too_few()
        reason = "too_few_accepted" if too_few else "roster_closed"
        for peer in invitation.to_release(cancelling=too_few):
            actions.append(self._send(group, peer, Cancel(reason), now_ms))
        if too_few:
            actions.append(self._end(group, RoundCancelled, reason, now_ms))
            return
        # The invitations took what they took: the rest of the round gets its own budget.
        group.deadline_ms = min(
            group.deadline_ms, now_ms + self.after_roster_budget_ms(group.invite.length)
        )
        roster = invitation.roster(
            self.public_key, group.my_accept_frame, RoundParams.of(group.invite), group.deadline_ms
        )
        for peer in roster.members[1:]:
            actions.append(self._send(group, peer, roster, now_ms))
        verified = VerifiedGroup.build(
            group.id,
            roster,
            invitation.ephemeral_keys(group.ephemeral.public_key),
            invitation.weights(group.contribution.weight),
            b"",
        )
        self._begin_round(group, verified, now_ms, actions)

    def _on_roster(
        self, group: Group, envelope: Envelope, now_ms: int, actions: list[Action]
    ) -> None:
        roster = envelope.body
        assert isinstance(roster, Roster)
        if envelope.sender != group.initiator:
            raise RoundFault("unexpected_roster", (envelope.sender,))
        group.members = roster.members  # from here on, aborts reach the whole roster
        verified = verify_roster(
            envelope,
            group_id=group.id,
            me=self.public_key,
            initiator=group.initiator,
            invite=group.invite,
            my_accept_frame=group.my_accept_frame,
            my_ephemeral_key=group.ephemeral.public_key,
            my_weight=group.contribution.weight,
            limits=self._limits,
            admitted=self._admitted,
            check_weights=self._safeguards.weight_bounds,
        )
        # What this member would allow from here, whatever the initiator set (a longer one only
        # holds it); a shorter one is the initiator's choice (see the CLOSING report).
        group.own_deadline_ms = now_ms + self.after_roster_budget_ms(group.invite.length)
        group.deadline_ms = min(group.deadline_ms, roster.deadline_ms, group.own_deadline_ms)
        self._begin_round(group, verified, now_ms, actions)
        early, group.early = group.early, []
        for buffered, size in early:
            self._dispatch(group, buffered, None, now_ms, actions, size)
            if self._group is not group:
                return

    # ---- the round ----

    def _begin_round(
        self, group: Group, verified: VerifiedGroup, now_ms: int, actions: list[Action]
    ) -> None:
        group.phase = Phase.RUNNING
        group.members = verified.members
        group.stats.members = verified.members
        actions.append(Wake(group.deadline_ms))  # the initiator's last wake was for invitations
        index = verified.members.index(self.public_key)
        group.aggregation = Aggregation(
            verified,
            index,
            group.ephemeral.private_key,
            group.contribution,
            masking=self._masking,
            shard_bytes=self.config.shard_bytes,
            max_abs_average=self.config.max_abs_average,
            limits=self._limits,
            safeguards=self._safeguards,
        )
        self._emit(group, group.aggregation.start(), now_ms, actions)

    def _dispatch(
        self,
        group: Group,
        envelope: Envelope,
        frame: bytes | None,
        now_ms: int,
        actions: list[Action],
        size: int = 0,
    ) -> None:
        """Route one verified envelope of the current group by (role, phase).

        ``frame`` is its raw bytes (kept for ACCEPTs, which go into the roster verbatim);
        buffered early envelopes are replayed with ``frame=None`` and their ``size``.
        """
        kind = envelope.type
        sender = envelope.sender
        if sender not in (group.members or group.invite.members):
            if (
                kind == Accept.TYPE
                and group.invitation is not None
                and sender in group.invitation.invitees
            ):
                # Answered after the roster closed: release it rather than let it wait.
                actions.append(self._send(group, sender, Cancel("roster_closed"), now_ms))
            else:
                # Someone outside the group cannot disturb it: refused, never an abort.
                actions.append(MessageRefused("not_in_group", sender, kind))
            return
        if group.phase is Phase.CLOSING and kind != Abort.TYPE:
            # The rest of a round this member stopped: still in flight, nobody's fault.
            actions.append(MessageRefused("closing", sender, kind))
            return
        if kind not in ALLOWED[(group.role, group.phase)]:
            if group.phase is Phase.INVITING and group.invitation is not None:
                # An invitee breaking the rules before the roster is struck and left out; the
                # round goes on with the others.
                self._strike((sender,), now_ms)
                group.invitation.unreachable(sender)
                if group.invitation.answered:
                    self._close_invitations(group, now_ms, actions)
                return
            raise RoundFault("unexpected_" + kind.lower(), (sender,))
        if kind == Abort.TYPE and group.phase is Phase.INVITING:
            # An invitee leaving before the roster only declines: the round goes on without
            # it (else one ABORT would end the round for every other invitee too).
            assert group.invitation is not None
            group.invitation.unreachable(sender)
            if group.invitation.answered:
                self._close_invitations(group, now_ms, actions)
        elif kind == Abort.TYPE:
            self._on_abort(group, envelope, now_ms, actions)
        elif kind in (Accept.TYPE, Busy.TYPE):
            assert group.invitation is not None
            if sender not in group.invitation.invitees:
                raise RoundFault("unexpected_" + kind.lower(), (sender,))
            if not group.invitation.answer(sender, envelope.body, frame):
                # An ACCEPT over the weight cap or of another schema, signed by its sender.
                self._strike((sender,), now_ms)
            if group.invitation.answered:
                self._close_invitations(group, now_ms, actions)
        elif kind == Roster.TYPE:
            self._on_roster(group, envelope, now_ms, actions)
        elif kind == Cancel.TYPE:
            if sender != group.initiator:
                raise RoundFault("unexpected_cancel", (sender,))
            actions.append(self._end(group, RoundCancelled, "initiator_cancelled", now_ms))
        elif group.phase is Phase.AWAIT_ROSTER:
            # A faster member may reach us before the roster does: keep it, bounded.
            size = len(frame) if frame is not None else size
            group.early_bytes += size
            if group.early_bytes > self._early_budget(group):
                raise RoundFault("too_much_before_roster", (sender,))
            group.early.append((envelope, size))
        else:
            assert group.aggregation is not None
            outgoing = group.aggregation.receive(group.members.index(sender), envelope)
            self._emit(group, outgoing, now_ms, actions)

    def _emit(
        self,
        group: Group,
        outgoing: list[tuple[int, Message]],
        now_ms: int,
        actions: list[Action],
    ) -> None:
        """Send the aggregation's messages; finish the round once it is done."""
        aggregation = group.aggregation
        assert aggregation is not None
        if aggregation.shared and not group.spent:
            # The masked parts are about to go out: from now on this contribution is in a sum
            # someone may see, finished or not.
            group.spent = True
            if self._safeguards.fresh_contributions:
                self._spend(group.contribution)
        for index, body in outgoing:
            actions.append(self._send(group, group.members[index], body, now_ms))
        if aggregation.step is not Step.DONE:
            if aggregation.pending_work:
                actions.append(Wake(now_ms))  # shards to mask or send: the driver's idle time
            return
        result = aggregation.result
        assert result is not None
        group.stats.ended_ms = now_ms
        group.stats.clipped = result.clipped
        self._forget(group, "finished")
        self._remember(aggregation)
        self._measure(group.stats)
        for member in group.members:
            self.backoff.forgive(member)
        actions.append(
            RoundFinished(
                group.id,
                group.members,
                result.average,
                result.total_weight,
                group.stats,
                group.contribution.vector,
            )
        )

    def _early_budget(self, group: Group) -> int:
        # Everything a member can legitimately send us in a round, plus framing slack.
        ring_bytes = group.invite.ring_bits // 8
        return 2 * group.invite.length * ring_bytes + len(group.invite.members) * (1 << 20)

    def _missing(self, group: Group) -> tuple[bytes, ...]:
        """Whom a deadline leaves this member waiting for: the initiator if its roster never
        came, else the members the aggregation still waits for (nobody while inviting:
        silence is a decline). Only round v2 blamed them (Safeguards.group_testing off)."""
        if group.aggregation is not None:
            return group.aggregation.missing()
        if group.phase is Phase.AWAIT_ROSTER:
            return (group.initiator,)
        return ()

    def _measure(self, stats: RoundStats) -> None:
        """Fold a finished round's throughput into the deadline estimate (halfway each time)."""
        seconds = max(stats.seconds, 0.001)
        measured = (stats.bytes_sent + stats.bytes_received) / seconds
        self._throughput = max(_THROUGHPUT_FLOOR, (self._throughput + measured) / 2)

    # ---- contributions ----

    def _is_spent(self, contribution: Contribution) -> bool:
        return self._safeguards.fresh_contributions and contribution.digest in self._spent

    def _spend(self, contribution: Contribution) -> None:
        self._spent[contribution.digest] = None
        while len(self._spent) > _SPENT_REMEMBERED:
            self._spent.popitem(last=False)

    # ---- what Endings asks of the node ----

    def _remembered_groups(self) -> int:
        return self.config.remembered_groups

    def _closing_grace_ms(self) -> int:
        return self.config.closing_grace_ms

    # ---- sending ----

    @staticmethod
    def _other_version(exc: UnsupportedVersion, from_peer: bytes | None) -> list[Action]:
        """Refuse a frame of another protocol version, silently: nothing signed goes out in
        answer to a frame whose signature was never checked (the driver logs the version
        the peer speaks, from the unverified header, once)."""
        return [MessageRefused(exc.reason, from_peer, exc.detail)]

    def _encode(self, to: bytes, body: Message, group_id: bytes, now_ms: int) -> bytes:
        return encode_envelope(
            self.identity, self.public_key, to, body, group=group_id, seq=self._seq(), ts=now_ms
        )

    def _send(self, group: Group, to: bytes, body: Message, now_ms: int) -> Send:
        return self._record_send(
            group, Send(to, self._encode(to, body, group.id, now_ms), body.TYPE)
        )

    @staticmethod
    def _record_send(group: Group, send: Send) -> Send:
        group.stats.bytes_sent += len(send.frame)
        group.stats.frames_sent += 1
        return send

    def _send_outside_group(self, to: bytes, body: Message, group_id: bytes, now_ms: int) -> Send:
        return Send(to, self._encode(to, body, group_id, now_ms), body.TYPE)
