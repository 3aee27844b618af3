"""The round's defences as switches, each on by default, for the tests that show the attack
each one stops succeeding once it is switched off. No configuration file can switch them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Safeguards:
    """Each defence, with the attack it stops (see gossiplearn.testing and SECURITY.md)."""

    #: The result agreement (CONFIRM): stops reducer equivocation (members applying different
    #: averages).
    confirm: bool = True
    #: A contribution is sent in at most one round: stops abort differencing.
    fresh_contributions: bool = True
    #: Declared weights above the cap are refused: stops the weight lever.
    weight_bounds: bool = True
    #: Backing off from members that hold or abort rounds.
    backoff: bool = True
    #: Deadlines scaled to the backbone (else always round_timeout_ms).
    scaled_deadlines: bool = True
    #: The roster agreement (READY) before any masked data: stops roster-order equivocation
    #: (two members' masks adding up instead of cancelling).
    roster_agreement: bool = True
    #: Pair seeds, mask signs and equivocation slots bound to the round's transcript (else, as
    #: in round v2, to the group id and each member's own view of the roster order): stops
    #: framing an honest member with its statement from an earlier round of the same group id,
    #: and reading x_A - x_B through a reordered roster.
    transcript_binding: bool = True
    #: Failures nobody can be blamed for strike nobody and go to group testing (else, as in
    #: round v2, the sender of an ABORT and the members a timeout waits for are struck): stops
    #: an insider making honest members strike each other.
    group_testing: bool = True
    #: An ABORT's proof convicts only a member of that same round (else any valid proof about
    #: anyone is taken from anyone).
    proof_scope: bool = True
    #: A member that aborts on a disagreeing CONFIRM relays it in its ABORT, so that members
    #: that already finished prove the split (else the insider that split the group after
    #: agreement goes unproven).
    relay_evidence: bool = True
