"""One insider against live daemons, for a while: how many rounds the honest peers still finish.

:func:`honest_rounds_per_minute` runs ``honest`` real daemons and one insider daemon in one
trio process on 127.0.0.1 (``gossiplearn.testing.cluster``), every daemon on its normal
schedule (training, then inviting its live neighbours every ``interval_s`` while it has a
contribution no round took). The insider's round machine runs one attack class of
:data:`ATTACKS` (or none: the control, where it is one more honest peer). It counts the
rounds honest peers finished (each group once, with or without the insider), per minute, and
the proofs any honest peer holds against an honest one (must be 0).
:func:`insider_figures` alternates control and attacks and takes the ratios (benchmarks/
insider_bench.py's line); tests/scenarios/test_insider.py runs it briefly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio

from gossiplearn.crypto.identity import peer_id_from_public_key
from gossiplearn.peer.evidence_store import EVIDENCE_DIR, ProofStore
from gossiplearn.peer.net.engine import PEER_FRAMES
from gossiplearn.protocol.evidence import verify_proof
from gossiplearn.protocol.node import Node
from gossiplearn.testing.cluster import key_of, prepare, running
from gossiplearn.testing.insider import (
    Attack,
    Framer,
    FramerNode,
    Holder,
    Insider,
    RosterReorder,
    Spoiler,
)
from gossiplearn.testing.scenarios.floods import Stalling, stall

#: The classes of the round v3 red team (and round v2's holder), by name: the insider's round
#: machine class and a function making its attack from the honest peers' keys.
ATTACKS: dict[str, tuple[type[Insider], Callable[[list[bytes]], Attack]]] = {
    "none": (Insider, lambda honest: Attack()),
    "framing": (FramerNode, lambda honest: Framer(victim=honest[0])),
    "roster_order": (Insider, lambda honest: RosterReorder(target=honest[-1])),
    "spoiling": (Insider, lambda honest: Spoiler(when="parts")),
    "holder": (Insider, lambda honest: Holder()),
    # Round v3's class 4: the insider plays its rounds honestly and, beside them, keeps
    # stalled bulk connections open to one honest peer's bulk port, each naming that peer's
    # round in progress and one of its partners (STALLED_PER_MEMBER per partner).
    "bulk_starvation": (Insider, lambda honest: Attack()),
}

#: Stalled connections per partner of the bulk-starvation victim: one more than a member's
#: frame quota, which round v2 let them take whole.
STALLED_PER_MEMBER = PEER_FRAMES + 1

#: Honest peers forget ended group ids after this many (1,024 by default, which the red team
#: passed with INVITE + CANCEL pairs in 73 s): the framer may reuse ids within a minute.
REMEMBERED_GROUPS = 16


@dataclass(frozen=True)
class InsiderRun:
    attack: str
    seconds: float
    honest_rounds: int  # finished at honest peers, each group counted once
    rounds_with_insider: int  # of which the insider was a member
    honest_aborts: dict[str, int]  # by reason, summed over honest peers
    proofs_against_honest: int
    insider_blocked_by: int  # honest peers backing off or refusing it at the end

    @property
    def honest_rounds_per_minute(self) -> float:
        return 60.0 * self.honest_rounds / self.seconds


def _forgetful(node_class: type[Node]) -> Callable[..., Node]:
    def make(*args: Any, **kwargs: Any) -> Node:
        node = node_class(*args, **kwargs)
        node.config = replace(node.config, remembered_groups=REMEMBERED_GROUPS)
        return node

    return make


async def honest_rounds_per_minute(
    work_dir: Path,
    attack: str,
    *,
    seconds: float = 60.0,
    honest: int = 4,
    interval_s: float = 0.5,
    min_rounds: int | None = None,
    until_blocked: bool = False,
) -> InsiderRun:
    """Run ``honest`` daemons and an insider running ``attack`` for ``seconds``; see the
    module docstring.

    With ``min_rounds`` (and ``until_blocked``), the run ends as soon as honest peers finished
    that many rounds (and at least one honest peer backs the insider off), ``seconds`` being
    only the bound: a test then waits for the count it asserts, not for wall time a loaded
    machine may stretch. Without them it runs ``seconds`` whole (the benchmark's rate).
    """
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {', '.join(ATTACKS)}")
    node_class, make_attack = ATTACKS[attack]
    dirs = prepare(Path(work_dir), honest + 1, interval_s=interval_s, group_size=4)
    factories = {0: _forgetful(node_class), **{i: _forgetful(Node) for i in range(1, honest + 1)}}
    async with running(dirs, node_factories=factories) as peers:
        insider, *others = peers
        machine = insider.node
        assert isinstance(machine, Insider)
        honest_keys = [key_of(p) for p in others]
        machine.attack = make_attack(honest_keys)
        insider_id = peer_id_from_public_key(key_of(insider))
        finished: dict[str, bool] = {}  # group -> with the insider
        aborts_before = [dict(p.rounds.abort_reasons) for p in others]

        def collect() -> None:
            # Each peer keeps only its latest rounds in status: read them as they come.
            for peer in others:
                for entry in peer.rounds.history:
                    finished[entry["group"]] = insider_id in entry["members"]

        collect()
        seen_before = set(finished)
        began = time.monotonic()
        async with trio.open_nursery() as nursery:
            if attack == "bulk_starvation":
                victim = others[0]
                partners = [key_of(p) for p in peers if p is not victim]
                nursery.start_soon(stall, victim, partners, STALLED_PER_MEMBER, Stalling())
            while time.monotonic() - began < seconds:
                await trio.sleep(0.25)
                collect()
                enough = min_rounds is not None and len(set(finished) - seen_before) >= min_rounds
                if enough and (not until_blocked or _blocked_by(insider, others) >= 1):
                    break
            nursery.cancel_scope.cancel()
        elapsed = time.monotonic() - began
        new = {g: w for g, w in finished.items() if g not in seen_before}
        honest_groups = list(new)
        with_insider = [g for g, w in new.items() if w]
        aborts: dict[str, int] = {}
        for peer, before in zip(others, aborts_before, strict=True):
            for reason, count in peer.rounds.abort_reasons.items():
                aborts[reason] = aborts.get(reason, 0) + count - before.get(reason, 0)
        proofs = 0
        for peer in others:
            for stored in ProofStore(peer.directory / EVIDENCE_DIR).load():
                if verify_proof(stored.proof).peer in honest_keys:
                    proofs += 1
        blocked_by = _blocked_by(insider, others)
    return InsiderRun(
        attack, elapsed, len(honest_groups), len(with_insider), aborts, proofs, blocked_by
    )


def _blocked_by(insider: Any, others: list[Any]) -> int:
    """Honest peers backing the insider off or refusing it now."""
    return sum(key_of(insider) in p.engine.view.blocked for p in others)


def run(work_dir: Path, attack: str, **options: Any) -> InsiderRun:
    """:func:`honest_rounds_per_minute` in its own trio run."""
    return trio.run(lambda: honest_rounds_per_minute(work_dir, attack, **options))


def insider_figures(
    work_dir: Path,
    classes: list[str],
    *,
    seconds: float = 60.0,
    interval_s: float = 10.0,
    min_rounds: int | None = None,
) -> dict[str, Any]:
    """insider_bench's line: per attack class, a control run (the insider runs honest code)
    then the attack, ``seconds`` each; the ratios are taken against the mean of the controls.

    With ``min_rounds``, each run ends once honest peers finished that many rounds (an attack
    run: and one of them backs the insider off), ``seconds`` being the bound (tests)."""
    unknown = [attack for attack in classes if attack not in ATTACKS]
    if unknown:
        raise ValueError(f"attack must be one of {', '.join(ATTACKS)}, not {unknown}")
    controls, results = [], {}
    for i, attack in enumerate(classes):
        options: dict[str, Any] = {
            "seconds": seconds,
            "interval_s": interval_s,
            "min_rounds": min_rounds,
        }
        controls.append(run(Path(work_dir) / f"control-{i}", "none", **options))
        until_blocked = min_rounds is not None and attack != "none"
        results[attack] = run(
            Path(work_dir) / attack, attack, **options, until_blocked=until_blocked
        )
    control = sum(c.honest_rounds_per_minute for c in controls) / max(len(controls), 1)
    line: dict[str, Any] = {
        "seconds": seconds,
        "interval_s": interval_s,
        "control_rounds_per_min": round(control, 1),
    }
    for attack, result in results.items():
        line[attack] = {
            "rounds_per_min": round(result.honest_rounds_per_minute, 1),
            "ratio": round(result.honest_rounds_per_minute / control, 2) if control else None,
            "proofs_against_honest": result.proofs_against_honest,
            "insider_blocked_by": result.insider_blocked_by,
            "honest_aborts": result.honest_aborts,
        }
    return line


__all__ = ["ATTACKS", "InsiderRun", "honest_rounds_per_minute", "insider_figures", "run"]
