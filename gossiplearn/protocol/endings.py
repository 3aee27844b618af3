"""How a round ends, and whom its end holds responsible.

Three kinds of ending (see events.ABORT_REASONS):

- **a certain fault**: a member saw a message its sender signed break the rules (or its
  transport cannot reach a peer): it strikes that sender, tells the others whom it accuses,
  and ends at once;
- **a proof**: two statements one member signed conflict: it is refused until an operator
  clears it, and the proof travels in the ABORT (only about members of that same round);
- **a failure nobody can prove** (a deadline passed, an ABORT arrived, the average is
  implausible): nobody is struck. A member that hits a deadline or hears an ABORT enters
  CLOSING: it sends every member its report (whom it waits for, or whom the ABORT's sender
  accused) and collects theirs for ``closing_grace_ms``; the suspects are then followed from
  report to report (whom-waits-for-whom), and group testing (suspicion.py) singles out the
  one member that keeps being there.

:class:`Endings` is the part of :class:`~gossiplearn.protocol.node.Node` that does this; it
holds no state of its own.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from gossiplearn.protocol.aggregation import Aggregation
from gossiplearn.protocol.backoff import Backoff
from gossiplearn.protocol.envelope import Envelope, Limits, verify_statement
from gossiplearn.protocol.errors import ProtocolError
from gossiplearn.protocol.events import (
    UNEXPLAINED_REASONS,
    Action,
    EquivocationDetected,
    MessageRefused,
    PeerSuspected,
    RoundAborted,
    RoundCancelled,
    RoundFault,
    Send,
    Wake,
)
from gossiplearn.protocol.evidence import EquivocationProof, InvalidProof, claim_of, verify_proof
from gossiplearn.protocol.messages import Abort, Message
from gossiplearn.protocol.safeguards import Safeguards
from gossiplearn.protocol.states import Group, Phase
from gossiplearn.protocol.suspicion import Suspicion

#: Ended rounds whose statements are kept, for an ABORT that arrives after this member
#: finished (a member that disagreed relays the CONFIRM it got: with ours, a proof).
REMEMBERED_ROUNDS = 16


class Endings:
    """Ending rounds and attributing their failures (a part of Node; see the module doc)."""

    public_key: bytes
    backoff: Backoff
    suspicion: Suspicion
    _safeguards: Safeguards
    _limits: Limits
    _group: Group | None
    _ended: OrderedDict[bytes, str]
    _recent: OrderedDict[bytes, Aggregation]

    def _send(self, group: Group, to: bytes, body: Message, now_ms: int) -> Send:
        raise NotImplementedError

    def _remembered_groups(self) -> int:
        raise NotImplementedError

    def _closing_grace_ms(self) -> int:
        raise NotImplementedError

    def _on_abort(
        self, group: Group, envelope: Envelope, now_ms: int, actions: list[Action]
    ) -> None:
        body = envelope.body
        assert isinstance(body, Abort)
        convicted = self._abort_evidence(group.aggregation, group.id, group, envelope, actions)
        if convicted is not None:
            # A proven equivocator is to blame, not the member that caught it.
            outcome = self._end(group, RoundAborted, "equivocation", now_ms, (convicted,))
            actions.append(outcome)
            return
        if not self._safeguards.group_testing:  # round v2: the aborter is blamed
            actions.append(
                self._end(group, RoundAborted, "peer_aborted", now_ms, (envelope.sender,))
            )
            return
        members = set(group.members or group.invite.members)
        group.reports[envelope.sender] = tuple(p for p in body.accused if p in members)
        if group.phase is Phase.CLOSING:
            return
        if group.aggregation is None:
            # Before the roster: no reports to wait for. The aborter and whom it accuses are
            # the suspects, and the other invitees learn it from this member's own ABORT.
            named = {envelope.sender, *body.accused}
            if (
                envelope.sender == group.initiator
                and body.transcript
                and body.reason.startswith("timeout")
            ):
                # The initiator's round ran to its deadline (seconds after its roster went
                # out) without this member ever getting the roster: whomever it says it
                # waited for, that is its own doing. (An ABORT for another reason may just
                # have overtaken a roster still in flight: then its accusations stand.)
                named = {group.initiator}
            elif envelope.sender != group.initiator and (body.transcript or group.early):
                # Another member already runs the round: a roster exists that this member was
                # never sent. Its initiator is where that started.
                named.add(group.initiator)
            suspects = tuple(p for p in group.invite.members if p != self.public_key and p in named)
            abort = Abort(b"", "peer_aborted", accused=suspects)
            for peer in group.participants():  # the aborter too: it may be collecting reports
                if peer != self.public_key:
                    actions.append(self._send(group, peer, abort, now_ms))
            actions.extend(self._end_unexplained(group, "peer_aborted", now_ms, suspects))
            return
        # The round is dead. If its deadline passed for the aborter, it is stuck here too:
        # this member reports whom it waits for, so that the reports can be followed to
        # whoever everyone waits for. Either way the aborter is where group testing starts.
        missing: tuple[bytes, ...] = ()
        if body.reason.startswith("timeout"):
            missing = group.aggregation.missing()
        start = frozenset({envelope.sender, *missing})
        # The report carries the chain so far (the aborter and whom it accuses), so that a
        # member that hears only this one ABORT can still follow it.
        chain = start | set(group.reports[envelope.sender])
        report = tuple(p for p in group.members if p in chain and p != self.public_key)
        self._start_closing(group, "peer_aborted", start, report, now_ms, actions)

    def _abort_evidence(
        self,
        aggregation: Aggregation | None,
        group_id: bytes,
        group: Group | None,
        envelope: Envelope,
        actions: list[Action],
    ) -> bytes | None:
        """The member an ABORT's proof (or relayed statement, with ours) convicts, if any.

        A proof counts only about a member of this same round instance: an ABORT is no
        channel for spreading proofs about anyone else."""
        body = envelope.body
        assert isinstance(body, Abort)
        members = aggregation.members if aggregation is not None else ()
        if not members and group is not None:
            members = group.members or group.invite.members
        transcript = aggregation.transcript if aggregation is not None else b""
        bind = self._safeguards.transcript_binding
        if body.proof:
            try:
                proven = verify_proof(body.proof, self._limits, bind_transcript=bind)
            except InvalidProof as exc:
                actions.append(MessageRefused(exc.reason, envelope.sender, exc.detail))
            else:
                in_scope = (
                    proven.peer in members
                    and proven.group == group_id
                    and (
                        not bind
                        or not transcript
                        or proven.transcript == transcript
                        or proven.slot[0] == "ROSTER"
                    )
                )
                if in_scope or not self._safeguards.proof_scope:
                    actions.extend(self._convict(proven.peer, body.proof, group_id))
                    return proven.peer
                actions.append(MessageRefused("foreign_proof", envelope.sender, "ABORT"))
        if body.evidence and aggregation is not None:
            proof = self._proof_from(aggregation, body.evidence)
            if proof is not None:
                peer, encoded = proof
                actions.extend(self._convict(peer, encoded, group_id))
                return peer
        return None

    def _proof_from(self, aggregation: Aggregation, statement: bytes) -> tuple[bytes, bytes] | None:
        """A relayed statement that conflicts with the one we hold from the same member and
        slot of this round: (that member, the proof)."""
        try:
            relayed = verify_statement(statement, limits=self._limits)
        except ProtocolError:
            return None
        claim = claim_of(relayed)
        if claim is None or relayed.group != aggregation.group.id:
            return None
        mine = aggregation.statement_of(relayed.sender, claim[0])
        if mine is None:
            return None
        proof = EquivocationProof(mine, statement)
        try:
            proof.verify(self._limits)
        except InvalidProof:
            return None
        return relayed.sender, proof.encode()

    def _late_abort(self, aggregation: Aggregation, envelope: Envelope) -> list[Action]:
        """An ABORT of a round this member already finished: only a proof (or a statement
        that makes one with ours) about one of its members changes anything."""
        actions: list[Action] = []
        if envelope.sender not in aggregation.members:
            return [MessageRefused("not_in_group", envelope.sender, envelope.type)]
        convicted = self._abort_evidence(aggregation, aggregation.group.id, None, envelope, actions)
        if convicted is None:
            actions.append(MessageRefused("stray_abort", envelope.sender, envelope.type))
        return actions

    def _start_closing(
        self,
        group: Group,
        reason: str,
        start: frozenset[bytes],
        report: tuple[bytes, ...],
        now_ms: int,
        actions: list[Action],
    ) -> None:
        """The round failed for a reason nobody can prove: tell every member, with this
        member's report, and collect theirs for closing_grace_ms (see _end_closing)."""
        transcript = group.aggregation.transcript if group.aggregation is not None else b""
        abort = Abort(transcript, reason, accused=report)
        for peer in group.participants():
            if peer != self.public_key:
                actions.append(self._send(group, peer, abort, now_ms))
        group.phase = Phase.CLOSING
        group.closing_reason = reason
        group.closing_from = start
        group.closing_until_ms = now_ms + self._closing_grace_ms()
        actions.append(Wake(group.closing_until_ms))

    def _end_closing(self, group: Group, now_ms: int) -> list[Action]:
        """End a CLOSING round. Its suspects: where it started (the members this member waited
        for, or the aborter) and, transitively, every member those reported waiting for. An
        honest member's report is true, so the chain of whom-waits-for-whom from any honest
        start reaches whoever broke the round; an insider's own report can only add names."""
        suspects: set[bytes] = set()
        stack = list(group.closing_from)
        while stack:
            peer = stack.pop()
            if peer in suspects:
                continue
            suspects.add(peer)
            stack.extend(group.reports.get(peer, ()))
        suspects.discard(self.public_key)
        ordered = tuple(p for p in group.members if p in suspects)
        return self._end_unexplained(group, group.closing_reason, now_ms, ordered)

    def _abort(self, group: Group, fault: RoundFault, now_ms: int) -> list[Action]:
        transcript = group.aggregation.transcript if group.aggregation is not None else b""
        evidence = fault.evidence if self._safeguards.relay_evidence else b""
        # The report: whom this member holds responsible (for a failure nobody can be blamed
        # for, everyone else), so that the others' group testing starts there too.
        everyone = group.members or group.invite.members
        accused = fault.blamed or (
            tuple(p for p in everyone if p != self.public_key)
            if fault.reason in UNEXPLAINED_REASONS
            else ()
        )
        abort = Abort(transcript, fault.reason, fault.proof, evidence, accused)
        actions: list[Action] = [
            self._send(group, peer, abort, now_ms)
            for peer in group.participants()
            if peer != self.public_key
        ]
        if fault.proof:
            for peer in fault.blamed:
                actions.extend(self._convict(peer, fault.proof, group.id))
        if fault.reason in UNEXPLAINED_REASONS and self._safeguards.group_testing:
            actions.extend(self._end_unexplained(group, fault.reason, now_ms))
        else:
            actions.append(self._end(group, RoundAborted, fault.reason, now_ms, fault.blamed))
        return actions

    def _convict(self, peer: bytes, proof: bytes, group_id: bytes) -> list[Action]:
        if peer == self.public_key or self.backoff.blocked(peer, 0) == "refused":
            return []  # one proof is enough: the same one relayed again is not news
        self.backoff.refuse(peer)
        return [EquivocationDetected(peer, proof, group_id)]

    def _end(
        self,
        group: Group,
        outcome: type[RoundAborted] | type[RoundCancelled],
        reason: str,
        now_ms: int,
        blamed: tuple[bytes, ...] = (),
    ) -> RoundAborted | RoundCancelled:
        """End the round; a certain fault strikes ``blamed``."""
        group.stats.ended_ms = now_ms
        self._forget(group, reason)
        if outcome is RoundCancelled:
            return RoundCancelled(group.id, reason, group.stats)
        blamed = tuple(peer for peer in blamed if peer != self.public_key)
        self._strike(blamed, now_ms)
        return RoundAborted(group.id, reason, group.stats, blamed)

    def _end_unexplained(
        self,
        group: Group,
        reason: str,
        now_ms: int,
        suspects: tuple[bytes, ...] | None = None,
    ) -> list[Action]:
        """End the round for a reason nobody can be blamed for: strike nobody, record the
        suspects for group testing, and act on what it singles out."""
        if suspects is None and reason == "timeout_await_roster":
            suspects = (group.initiator,)
        elif suspects is None:
            # Everyone the round had (before the roster, whoever the INVITE named).
            everyone = group.members or group.invite.members
            suspects = tuple(p for p in everyone if p != self.public_key)
        group.stats.ended_ms = now_ms
        self._forget(group, reason)
        actions: list[Action] = [RoundAborted(group.id, reason, group.stats, (), suspects)]
        singled = self.suspicion.failed(suspects, alone_is_enough=reason == "timeout_running")
        if len(singled) == 1:
            self._strike(singled, now_ms)
        elif len(singled) == 2:
            self.backoff.keep_apart(singled[0], singled[1], now_ms)
        if singled:
            actions.append(PeerSuspected(singled, self.suspicion.singled_after))
        return actions

    def _strike(self, peers: Iterable[bytes], now_ms: int) -> None:
        if self._safeguards.backoff:
            for peer in peers:
                if peer != self.public_key:
                    self.backoff.strike(peer, now_ms)

    def _forget(self, group: Group, outcome: str) -> None:
        if self._group is group:
            self._group = None
        self._ended[group.id] = outcome
        while len(self._ended) > self._remembered_groups():
            self._ended.popitem(last=False)
        if group.aggregation is not None and outcome != "finished":
            self._remember(group.aggregation)

    def _remember(self, aggregation: Aggregation) -> None:
        aggregation.shed()
        self._recent[aggregation.group.id] = aggregation
        while len(self._recent) > REMEMBERED_ROUNDS:
            self._recent.popitem(last=False)
