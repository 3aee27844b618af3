"""Why a peer starts no rounds now: the causes an operator can fix.

Every WATCH_S the runtime works them out from its neighbour table (:meth:`WaitingWatch.check`),
lists them under ``waiting`` in the status, sets the ``gossiplearn_waiting`` gauge of each
cause, and logs each cause once when it appears (too few neighbours: once it lasted a few
pings) and once more when it clears (:meth:`WaitingWatch.log`). The causes:

- ``too_few_neighbours``: fewer than MIN_INVITABLE neighbours can be invited;
- ``clock_skew``: a neighbour's clock is off ours by more than CLOCK_TOLERANCE_MS;
- ``schema_mismatch``: a neighbour runs another model (backbone schema);
- ``peer_id_mismatch`` (and any other cause discovery reports): an address answered with
  another peer id than the one it was given with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from gossiplearn.peer.net.neighbours import Neighbour, NeighbourTable, short_id
from gossiplearn.peer.status import Metrics
from gossiplearn.protocol.replay import DEFAULT_FRESHNESS_MS

log = logging.getLogger("gossiplearn.peer")

#: A neighbour whose clock is off ours by more than this is not invited. Messages older or
#: newer than the freshness window (30 s) are refused as stale, and a round's frames are
#: stamped when sent, so half the window leaves room for delays and estimation error.
CLOCK_TOLERANCE_MS = DEFAULT_FRESHNESS_MS / 2
WATCH_S = 1.0  # how often the reasons for waiting are re-checked
MIN_INVITABLE = 2  # a round needs us and two others
#: The causes with a ``gossiplearn_waiting`` gauge.
GAUGED_CAUSES = ("too_few_neighbours", "clock_skew", "schema_mismatch", "peer_id_mismatch")


@dataclass
class Waiting:
    """One reason the peer cannot start (some) rounds now."""

    cause: str  # too_few_neighbours, clock_skew, schema_mismatch, peer_id_mismatch
    message: str
    peer: str | None = None  # the neighbour it is about, if any


def _has_dial_problem(neighbour: Neighbour | None) -> bool:
    return neighbour is not None and neighbour.dial_problem is not None


class WaitingWatch:
    """What the watch keeps between checks: the problems discovery reported, and the causes
    logged (and not yet cleared). ``config_file`` is named in the fix of a wrong address."""

    def __init__(self, config_file: Path) -> None:
        self._config_file = config_file
        self._logged: set[tuple[str, str]] = set()  # causes logged and not yet cleared
        self._problems: dict[tuple[str, bytes], str] = {}  # reported by discovery

    def dial_problem(self, cause: str, key: bytes, detail: str) -> None:
        """Discovery could not reach ``key`` for a reason the operator can fix."""
        self._problems[(cause, key)] = detail

    def check(self, table: NeighbourTable, schema_hash: bytes | None, now: float) -> list[Waiting]:
        """The reasons rounds cannot start now (``schema_hash``: our backbone's, None until
        known); problems discovery reported are forgotten once solved."""
        live = table.live(now)
        invitable = table.invitable(now)
        reasons: list[Waiting] = []
        if len(invitable) < MIN_INVITABLE:
            if len(live) < MIN_INVITABLE:
                text = f"{len(live)} live neighbour{'s' * (len(live) != 1)}, need {MIN_INVITABLE}"
            else:
                text = (
                    f"{len(invitable)} of {len(live)} live neighbours can join a round, need "
                    f"{MIN_INVITABLE}"
                )
            reasons.append(Waiting("too_few_neighbours", text))
        skewed = [n for n in live if table.clock_skewed(n)]
        for n in skewed:
            offset_s = (n.clock_offset_ms or 0.0) / 1000
            hint = " (every live neighbour is off: ours may be)" if len(skewed) == len(live) else ""
            reasons.append(
                Waiting(
                    "clock_skew",
                    f"the clock of {short_id(n.peer_id)} is {offset_s:+.1f} s off ours "
                    f"(tolerance +-{CLOCK_TOLERANCE_MS / 1000:.0f} s){hint}: not inviting it; "
                    "synchronize both clocks (NTP)",
                    n.peer_id,
                )
            )
        for n in live:
            if table.schema_differs(n):
                theirs = (n.schema_hash or b"").hex()[:8]
                ours = (schema_hash or b"").hex()[:8]
                reasons.append(
                    Waiting(
                        "schema_mismatch",
                        f"{short_id(n.peer_id)} runs another model (backbone schema {theirs}, "
                        f"ours {ours}): it cannot join our rounds; give every peer the same "
                        "model.factory and model.options",
                        n.peer_id,
                    )
                )
        for (cause, key), detail in sorted(self._problems.items()):
            neighbour = table.get(key)
            if neighbour is None or neighbour.dial_problem is None:
                continue  # answered since (or forgotten): solved
            addresses = ", ".join(neighbour.dial_plan()) or "its address"
            reasons.append(
                Waiting(
                    cause,
                    f"{addresses} {detail}, not {neighbour.peer_id}: fix that address "
                    f"(peer.bootstrap in {self._config_file}, or the peer's record)",
                    neighbour.peer_id,
                )
            )
        self._problems = {
            k: v for k, v in self._problems.items() if _has_dial_problem(table.get(k[1]))
        }
        return reasons

    def log(self, reasons: list[Waiting], metrics: Metrics, settling: bool) -> None:
        """Log each cause once when it appears and once more when it clears; set the gauges.
        ``settling``: the peer started moments ago (too few neighbours is not news yet)."""
        active = set()
        for reason in reasons:
            if reason.cause == "too_few_neighbours" and settling:
                continue
            key = (reason.cause, reason.peer or "")
            active.add(key)
            if key not in self._logged:
                self._logged.add(key)
                log.warning("waiting: %s", reason.message)
        for key in sorted(self._logged - active):
            if key[0] != "checkpoint":
                self._logged.discard(key)
                peer = f" ({key[1]})" if key[1] else ""
                log.info("no longer waiting: %s%s cleared", key[0], peer)
        for cause in GAUGED_CAUSES:
            metrics.waiting.labels(cause).set(int(any(r.cause == cause for r in reasons)))
