"""Group testing: who keeps being there when rounds fail for reasons nobody can prove.

Some failures carry no evidence of who caused them. A garbage PART is hidden by the masks, so
an implausible average shows only that *some* member sent garbage; a missing message may be
missing because someone else withheld what its sender waited for; an ABORT proves nothing
about why it was sent. Blaming whoever looked guilty (the ABORT's sender, the member whose
message was missing) let one insider make honest members strike each other. So such a failure
strikes nobody: each member records the set of the other members (the *suspects*) and keeps
the last :data:`WINDOW` such sets.

- A deadline whose suspects are one peer alone (every report led to it, and it named nobody
  it waited for): it is struck at once. An honest peer never ends up alone: stuck because of
  someone, it reports whom it waits for within the closing grace.
- One peer in every recorded failure (at least two of them), and nobody else in all of them:
  it is struck (backed off, as a blamed peer is). A single insider is in every failure it
  causes, and its victims change from group to group, so it is singled out after a few
  failures; the record is kept, so each further failure with it strikes it again.
- Two peers always there together over a full window: they are kept apart (this member joins
  no group holding both) and the record starts again. An insider that spoils only the rounds
  of one chosen victim looks, from outside, exactly like that victim spoiling the insider's
  rounds; keeping them apart ends the attack without striking either.
- A failure with no peer in common with the older ones pushes the older ones out.

With one insider and no other cause of failure, the peer singled out is always the insider:
it is in every set. Honest causes (a crashed or overloaded peer) can single out an honest
peer that really did keep failing: it gets a backoff, never a refusal. Two colluding insiders
can steer the record onto an honest peer (spoil only the rounds that contain it); the cost
is backoffs of that peer, which expire (see docs/protocol.md).

Sans-I/O and deterministic, like the rest of the protocol.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

#: Unexplained failures remembered: a pair is kept apart after this many together.
WINDOW = 4


class Suspicion:
    """One member's record of unexplained failures (sets of suspects)."""

    def __init__(self, window: int = WINDOW) -> None:
        if window < 2:
            raise ValueError("the window holds at least two failures")
        self.window = window
        self._failures: deque[frozenset[bytes]] = deque()
        #: How many recorded failures the last peers singled out were common to.
        self.singled_after = 0

    @property
    def recorded(self) -> int:
        return len(self._failures)

    def failed(
        self, suspects: Iterable[bytes], *, alone_is_enough: bool = False
    ) -> tuple[bytes, ...]:
        """Record one unexplained failure. Returns the peers it now singles out: one (strike
        it), two (keep them apart), or none. ``alone_is_enough``: the suspects came from
        following every member's report of whom it waited for (a deadline), so a single one
        is singled out at once."""
        current = frozenset(suspects)
        if not current:
            return ()
        self._failures.append(current)
        if len(current) == 1 and alone_is_enough:
            # Every report led to this one peer and it named nobody (see Node's CLOSING): an
            # honest peer stuck because of someone always names whom it waits for.
            self.singled_after = 1
            while len(self._failures) > self.window:
                self._failures.popleft()
            return tuple(current)
        common = self._common()
        while not common:  # this failure shares no suspect with the older ones: drop them
            self._failures.popleft()
            common = self._common()
        if len(self._failures) >= 2 and len(common) == 1:
            # Kept (not cleared): every recorded failure holds this peer, so its next one
            # singles it out again at once, while a failure without it slides them out.
            self.singled_after = min(len(self._failures), self.window)
            while len(self._failures) > self.window:
                self._failures.popleft()
            return tuple(common)
        if len(self._failures) >= self.window:
            if len(common) == 2:
                self.singled_after = len(self._failures)
                self._failures.clear()
                return tuple(sorted(common))
            self._failures.popleft()
        return ()

    def _common(self) -> frozenset[bytes]:
        return frozenset.intersection(*self._failures)
