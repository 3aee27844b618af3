"""What the round machine returns (actions and outcomes), and the registry of its reason codes.

A :class:`~gossiplearn.protocol.node.Node` answers every input with a list of actions:
:class:`Send` (deliver a signed frame), :class:`Wake` (call ``tick`` then), the outcomes of a
round (:class:`RoundFinished`, :class:`RoundAborted`, :class:`RoundCancelled`),
:class:`MessageRefused` (a frame dropped without effect) and :class:`EquivocationDetected` (a
proof that a peer signed two conflicting messages, to keep).

Every reason a machine gives is a stable code registered below (as ``errors.REASONS`` does for
the envelope): drivers count them in metrics, pre-registered, and their meaning never changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gossiplearn.protocol.errors import REASONS as ENVELOPE_REASONS


class RoundUsageError(RuntimeError):
    """The caller asked something the machine cannot do now (our bug, not a peer's)."""


# ---- reason registries ------------------------------------------------------------------------

#: Why a round aborted, and whom a member holds responsible (see RoundAborted). Three kinds:
#: a fault a member saw first-hand in a message its sender signed (or a peer its transport
#: cannot reach) strikes that sender; an equivocation proof refuses the equivocator; a failure
#: nobody can be blamed for with certainty (UNEXPLAINED_REASONS) strikes nobody and goes to
#: group testing (suspicion.py).
ABORT_REASONS: dict[str, str] = {
    # deadlines and the transport
    "timeout_running": "the round passed its deadline; unexplained (a message can be missing "
    "because someone else withheld what its sender waited for): suspects are the other members",
    "timeout_await_roster": "the initiator sent neither ROSTER nor CANCEL in time; unexplained: "
    "the suspect is the initiator",
    "timeout_inviting": "the round's deadline passed while the initiator was still inviting",
    "initiator_unreachable": "the transport cannot reach the initiator; blamed: it",
    "member_unreachable": "the transport cannot reach a member; blamed: it",
    "peer_aborted": "another member sent ABORT without a proof; unexplained: suspects are the "
    "other members (an ABORT proves nothing about who caused it)",
    "peer_stopping": "this peer is stopping (its driver aborted the round)",
    # the roster (blamed: the initiator, who signed it)
    "unexpected_roster": "a ROSTER from someone other than the initiator, or a second one",
    "bad_roster": "the roster's members are not the invited ones, exclude this peer, or its "
    "parameters are not the INVITE's",
    "bad_roster_accept": "an ACCEPT in the roster is not a valid, signed ACCEPT of its member, "
    "or declares a weight above the cap",
    "roster_altered_my_accept": "the roster carries another ACCEPT for this peer",
    "bad_ephemeral_key": "a member's ephemeral key is unusable (small order); blamed: it",
    "too_much_before_roster": "a member sent more before the roster than a round can hold",
    # messages that break the round's rules (blamed: their signer)
    "unexpected_invite": "an INVITE inside a running group",
    "unexpected_accept": "an ACCEPT from a non-invitee, or after the roster",
    "unexpected_busy": "a BUSY from a non-invitee",
    "unexpected_cancel": "a CANCEL from someone other than the initiator, or after the roster",
    "unexpected_ready": "a READY from the initiator, or a second one",
    "unexpected_part": "a PART at the wrong time",
    "unexpected_reduced": "a REDUCED at the wrong time",
    "unexpected_confirm": "a second CONFIRM",
    "bad_ready": "a READY whose transcript is not this member's and whose relayed ROSTER does "
    "not prove the initiator signed another one",
    "wrong_transcript": "a PART, REDUCED or CONFIRM of another round instance than the one every "
    "member agreed on",
    "misaddressed_part": "a PART for a part this member does not reduce",
    "misattributed_reduced": "a REDUCED for a part its sender does not reduce",
    "bad_part_dtype": "PART shards of a dtype other than u4",
    "bad_reduced_dtype": "REDUCED shards of a dtype other than u4",
    "inconsistent_part_shards": "PART shards that disagree on their total",
    "inconsistent_reduced_shards": "REDUCED shards that disagree on their total",
    "duplicate_part_shard": "the same PART shard twice",
    "duplicate_reduced_shard": "the same REDUCED shard twice",
    "oversized_part": "PART shards beyond the part's length",
    "oversized_reduced": "REDUCED shards beyond the part's length",
    "bad_part": "PART shards that do not join into the part",
    "bad_reduced": "REDUCED shards that do not join into the part",
    "bad_reduced_digest": "a reduced part whose data does not match its signed part digest",
    # the agreements
    "equivocation": "a member signed two conflicting statements (a proof is kept); blamed and "
    "refused: that member",
    "disagreement": "a CONFIRM digest differs from this member's though no statement proves an "
    "equivocation (an honest member's digest can only differ with such a proof); blamed: the "
    "members whose digest differs, whose CONFIRM is relayed in the ABORT",
    # the unmasked average, which every honest member holds bit-identically (the masks hide who
    # sent what)
    "implausible_average": "an element of the average is not finite or beyond max_abs_average; "
    "unexplained: suspects are the other members",
}

#: Aborts nobody can be blamed for with certainty: no strike; the other members (for
#: timeout_await_roster, the initiator) are recorded as suspects for group testing.
UNEXPLAINED_REASONS: frozenset[str] = frozenset(
    {"timeout_running", "timeout_await_roster", "peer_aborted", "implausible_average"}
)

#: Why a round was cancelled before it started.
CANCEL_REASONS: dict[str, str] = {
    "too_few_accepted": "fewer than 3 members would be in the group",
    "roster_closed": "the roster closed without this invitee (it answered late)",
    "initiator_cancelled": "the initiator cancelled before the roster",
}

#: Why an idle peer declines an INVITE (the BUSY reason).
BUSY_REASONS: dict[str, str] = {
    "busy": "already in a group",
    "not_ready": "no contribution yet",
    "contribution_spent": "its contribution was already used in a round; it must change "
    "(train) before the next",
    "schema_mismatch": "another backbone layout or length",
    "params_mismatch": "another frac_bits or max_weight (network-wide settings)",
    "group_too_large": "more members than this peer's group size allows",
    "backoff": "the initiator is backed off after rounds it held or aborted",
    "refused": "the initiator equivocated (a proof is kept) and is refused until cleared",
    "blocked_member": "another invited member is backed off or refused, or two invited "
    "members are kept apart after failures only they had in common",
}

#: Why the machine dropped a frame without effect (besides the envelope's own reasons).
REFUSAL_REASONS: dict[str, str] = {
    **{reason: "the envelope check refused it" for reason in ENVELOPE_REASONS},
    "not_in_group": "its sender is not a member (never an abort)",
    "unknown_group": "for a group this peer is not in",
    "ended_group": "for a group that has ended here",
    "bad_invite": "an INVITE whose members do not start with its sender or omit this peer",
    "bad_invite_deadline": "an INVITE whose deadline is past or beyond round_timeout",
    "not_admitted_member": "an INVITE naming a member this peer does not admit",
    "bad_proof": "an ABORT carrying a proof that does not verify",
    "foreign_proof": "an ABORT carrying a proof about another round or a non-member (ignored: "
    "only the members of a round can be convicted through it)",
    "stray_abort": "an ABORT for a round this peer finished, carrying nothing that proves an "
    "equivocation",
    "closing": "a round message after this member stopped the round (it only collects the "
    "others' reports then): in flight, nobody's fault",
}


class RoundFault(Exception):
    """Inside the machine: the current group must abort with ``reason`` (registered in
    ABORT_REASONS), holding ``blamed`` responsible (for an unexplained reason: suspecting
    them); ``proof``: an encoded equivocation proof; ``evidence``: a statement to relay (the
    disagreeing CONFIRM) so that the others can build a proof."""

    def __init__(
        self,
        reason: str,
        blamed: tuple[bytes, ...] = (),
        proof: bytes = b"",
        evidence: bytes = b"",
    ) -> None:
        if reason not in ABORT_REASONS:
            raise RoundUsageError(f"unregistered abort reason {reason!r}")
        super().__init__(reason)
        self.reason = reason
        self.blamed = blamed
        self.proof = proof
        self.evidence = evidence


# ---- actions ----------------------------------------------------------------------------------


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
    """Every member agreed (CONFIRM) on this average: apply it.

    ``contribution`` is the vector this member brought to the round, so a driver that kept
    training meanwhile can apply the change ``average - contribution`` instead of
    overwriting its newer backbone.
    """

    group: bytes
    members: tuple[bytes, ...]
    average: np.ndarray  # float32, bit-identical at every member
    total_weight: int
    stats: RoundStats
    contribution: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))


@dataclass(frozen=True)
class RoundAborted:
    """The round ended without an average. ``blamed``: the members this peer holds
    responsible with certainty (it struck them, or refuses a proven equivocator);
    ``suspects``: for an unexplained reason, the members group testing records (see
    suspicion.py; a :class:`PeerSuspected` follows when that singles one out)."""

    group: bytes
    reason: str
    stats: RoundStats
    blamed: tuple[bytes, ...] = ()
    suspects: tuple[bytes, ...] = ()


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


@dataclass(frozen=True)
class EquivocationDetected:
    """``peer`` signed two conflicting messages; ``proof`` (an encoded
    :class:`~gossiplearn.protocol.evidence.EquivocationProof`) shows it to anyone. The
    machine refuses the peer from now on; the driver should keep the proof and count it."""

    peer: bytes
    proof: bytes
    group: bytes


@dataclass(frozen=True)
class PeerSuspected:
    """Group testing singled out ``peers`` from failures nobody could be blamed for: one peer
    present in every one of the last ``failures`` (struck: backed off like a blamed one), or a
    pair always present together (kept apart: never in one group with this peer)."""

    peers: tuple[bytes, ...]
    failures: int


Outcome = RoundFinished | RoundAborted | RoundCancelled
Action = (
    Send
    | Wake
    | RoundFinished
    | RoundAborted
    | RoundCancelled
    | MessageRefused
    | EquivocationDetected
    | PeerSuspected
)
