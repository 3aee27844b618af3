"""A neighbour with a skewed clock: four daemons inviting every ~1 s, one whose ping answers say
its clock is ``skew_s`` ahead. The others must estimate its offset, flag it, and never invite it
once flagged (tests/peer/net/test_clock_skew.py; benchmarks/hostile_bench.py ``--skew``)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from gossiplearn.testing.scenarios.live import dead, key_of, prepare_round_peers, running

# ---- a neighbour with a skewed clock --------------------------------------------------------


async def clock_skew_scenario(
    work_dir: Path, skew_s: float, seconds: float, defence: bool = True
) -> dict[str, Any]:
    """Four daemons inviting every ~1 s; the last one's clock is ``skew_s`` ahead (as its ping
    answers tell: the daemons share this process's clock, so only what the others learn of its
    clock is skewed, not the timestamps of its messages). For ``seconds``: the offset the
    others estimate for it, how soon they flag it, and how many invitations name it (none
    with the defence; ``defence=False``: the others pick their invitees among all live
    neighbours, as before)."""
    dirs = prepare_round_peers(Path(work_dir), 4, interval_s=1.0)
    async with running(dirs) as cluster:
        *honest, skewed = cluster
        skewed.peer.discovery.clock = lambda: time.time() + skew_s
        skewed_key = key_of(skewed)
        invitations: Counter[str] = Counter()
        flagged_after: list[float | None] = [None] * len(honest)
        for i, victim in enumerate(honest):
            peer = victim.peer
            if not defence:
                peer.table.invitable = peer.table.live  # type: ignore[method-assign]
            original = peer.engine.start_round

            async def start_round(
                keys: Sequence[bytes], _original: Any = original, i: int = i
            ) -> None:
                # Before its clock is known (the median of a few pings), it may be invited.
                known = "known" if flagged_after[i] is not None else "not_yet_known"
                invitations[f"{known}:{'skewed' if skewed_key in keys else 'others'}"] += 1
                await _original(keys)

            peer.engine.start_round = start_round  # type: ignore[method-assign,assignment]
        rounds_before = [v.peer.rounds.completed for v in honest]
        started = time.perf_counter()
        deadline = trio.current_time() + seconds
        while trio.current_time() < deadline and not dead(cluster):
            for i, victim in enumerate(honest):
                neighbour = victim.peer.table.get(skewed_key)
                if (
                    flagged_after[i] is None
                    and neighbour is not None
                    and victim.peer.table.clock_skewed(neighbour)
                ):
                    flagged_after[i] = round(time.perf_counter() - started, 2)
            await trio.sleep(0.1)
        neighbours = [v.peer.table.get(skewed_key) for v in honest]
        estimates = [None if n is None else n.clock_offset_ms for n in neighbours]
        waiting = [
            [w.cause for w in v.peer.waiting if w.peer == skewed.peer.peer_id] for v in honest
        ]
        result = {
            "skew_s": skew_s,
            "seconds": seconds,
            "defence": defence,
            "estimated_offset_s": [None if e is None else round(e / 1000, 3) for e in estimates],
            "worst_estimate_error_ms": max(
                (abs(e - skew_s * 1000) for e in estimates if e is not None), default=None
            ),
            "flagged_after_s": flagged_after,
            # Once the inviter has flagged its clock (by then ~3 pings have shown the skew).
            "invitations_naming_skewed": invitations["known:skewed"],
            "invitations_without_it": invitations["known:others"],
            "invitations_before_flagged": invitations["not_yet_known:skewed"]
            + invitations["not_yet_known:others"],
            "honest_rounds_completed": [
                v.peer.rounds.completed - b for v, b in zip(honest, rounds_before, strict=True)
            ],
            "waiting_causes_about_it": waiting,
            "crashed": dead(cluster),
        }
    result["stopped_cleanly"] = all(v.done.is_set() and v.error is None for v in cluster)
    return result
