"""The states of one member's round, and the table of what each state accepts.

Like h11's state machine: a member is in one :class:`Phase` of one :class:`Group` at a time,
and :data:`ALLOWED` says, for each (role, phase), which message types a member of the group
may send it. The node (node.py) routes every verified frame through this table; the table is
the whole answer to "what may arrive now".

    initiator: INVITING --roster sent--> RUNNING --(failure nobody can prove)--> CLOSING
    member:    AWAIT_ROSTER --roster verified--> RUNNING --(same)--> CLOSING
    (any phase) --finished / certain fault / cancel--> no group

:class:`Group` holds everything a member keeps about the round it is in.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from gossiplearn.crypto.agreement import EphemeralKey
from gossiplearn.protocol.aggregation import Aggregation, Contribution
from gossiplearn.protocol.envelope import Envelope
from gossiplearn.protocol.events import RoundStats
from gossiplearn.protocol.matchmaking import Invitation
from gossiplearn.protocol.messages import (
    Abort,
    Accept,
    Busy,
    Cancel,
    Confirm,
    Invite,
    Part,
    Ready,
    Reduced,
    Roster,
)


class Phase(enum.Enum):
    INVITING = "inviting"  # initiator: waiting for ACCEPT/BUSY
    AWAIT_ROSTER = "await_roster"  # member: accepted, waiting for ROSTER/CANCEL
    RUNNING = "running"  # roster known: the aggregation runs
    #: the round failed for a reason nobody can prove (a deadline, an ABORT): the member sent
    #: its report and collects the others' for closing_grace_ms (group testing follows them)
    CLOSING = "closing"


_ROUND_TYPES = frozenset({Ready.TYPE, Part.TYPE, Reduced.TYPE, Confirm.TYPE})
#: Which message types a member of the group may send us, by (our role, our phase). Anything
#: else from a member aborts the round ("unexpected_<type>"); anything from a non-member is
#: refused without effect. In AWAIT_ROSTER the round's types are buffered until the roster.
ALLOWED: dict[tuple[str, Phase], frozenset[str]] = {
    ("initiator", Phase.INVITING): frozenset({Accept.TYPE, Busy.TYPE, Abort.TYPE}),
    ("member", Phase.AWAIT_ROSTER): _ROUND_TYPES | {Roster.TYPE, Cancel.TYPE, Abort.TYPE},
    ("initiator", Phase.RUNNING): _ROUND_TYPES | {Abort.TYPE},
    ("member", Phase.RUNNING): _ROUND_TYPES | {Abort.TYPE},
    ("initiator", Phase.CLOSING): frozenset({Abort.TYPE}),
    ("member", Phase.CLOSING): frozenset({Abort.TYPE}),
}


@dataclass
class Group:
    id: bytes
    role: str
    initiator: bytes
    invite: Invite
    deadline_ms: int
    ephemeral: EphemeralKey
    contribution: Contribution
    stats: RoundStats
    phase: Phase
    my_accept_frame: bytes
    #: initiator, while inviting; member, until the roster: the matchmaking deadline
    invite_deadline_ms: int = 0
    invitation: Invitation | None = None  # initiator
    #: member, before the roster: verified envelopes of this group, replayed after it
    early: list[tuple[Envelope, int]] = field(default_factory=list)
    early_bytes: int = 0
    members: tuple[bytes, ...] = ()
    aggregation: Aggregation | None = None
    spent: bool = False
    #: the deadline this member would have given the round itself (a member: the initiator's
    #: may be earlier, and then the initiator chose when the round fails)
    own_deadline_ms: int = 0
    #: CLOSING: why, until when, where group testing starts, and the reports (accused sets)
    closing_reason: str = ""
    closing_until_ms: int = 0
    closing_from: frozenset[bytes] = frozenset()
    reports: dict[bytes, tuple[bytes, ...]] = field(default_factory=dict)

    def participants(self) -> tuple[bytes, ...]:
        """Everyone this member would tell about an abort."""
        if self.members:
            return self.members
        if self.invitation is not None:
            return self.invitation.invitees
        # Before the roster: every invitee (the ones that declined ignore it), so that a
        # member leaving tells the others why instead of going silent.
        return self.invite.members
