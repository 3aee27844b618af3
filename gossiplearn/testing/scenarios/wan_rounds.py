"""Round time across a WAN: k peer processes in a :class:`~gossiplearn.testing.netlab.NetLab`,
each a libp2p host driving the round machine through the daemon's round engine (no training),
peer 0 initiating rounds and timing them; and the lower bound a round cannot beat.

A round is seven message steps (INVITE, ACCEPT, ROSTER, READY, PART, REDUCED, CONFIRM), each a
one-way delay on the critical path (RTT / 2), and two of them carry the model: a member sends
(k - 1) / k of its masked vector in PART and (k - 1) / k of a vector in REDUCED, over its own
uplink, each step after the last. So, with V = 4 n bytes (float32 on a 32-bit ring) and B the
access bandwidth::

    lower bound = 7 x RTT / 2 + 2 (k - 1) / k x V / B

benchmarks/wan_bench.py prints :func:`measure` for a grid of RTTs and bandwidths;
:func:`plot` draws them.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gossiplearn.testing.netlab import NetLab, default_congestion, uniform

PORT = 4001
#: Message steps of a round (docs/protocol.md), each one one-way delay.
MESSAGE_STEPS = 7
#: The ROSTER arrives, then READY, PART, REDUCED, CONFIRM: what a member still waits for
#: once the roster is out (the round machine's after-roster budget covers these).
STEPS_AFTER_ROSTER = 5
CHILD_TIMEOUT_S = 3600.0
#: The round machine's defaults a deployed peer runs with (protocol/config.py, node.py): the
#: deadline is invite timeout + slack + 4 x 2 x ring bytes x n / throughput, at most the round
#: timeout; the throughput starts at the assumed figure and follows finished rounds only.
DEFAULT_INVITE_S = 2.0
DEFAULT_SLACK_S = 3.0
DEFAULT_ROUND_TIMEOUT_S = 60.0
ASSUMED_BYTES_PER_S = 10_000_000
DEADLINE_SAFETY = 4


def digits_backbone_size() -> int:
    """Elements of the built-in digits MLP's backbone (what `gossiplearn sim` averages)."""
    from gossiplearn.peer.learning.architectures import mlp
    from gossiplearn.peer.learning.split_model import SplitModel

    return int(SplitModel(mlp()).backbone_size)


def lower_bound_s(n: int, k: int, rtt_ms: float, mbit: float | None) -> float:
    transfer = 0.0 if mbit is None else 2 * (k - 1) / k * 4 * n / (mbit * 1e6 / 8)
    return MESSAGE_STEPS * rtt_ms / 2000 + transfer


def default_deadline_s(n: int, throughput: float = ASSUMED_BYTES_PER_S) -> float:
    """The deadline a default-configured initiator gives a round of n elements at this
    throughput estimate (bytes/s; before its first finished round: the assumed 10 MB/s)."""
    transfer = DEADLINE_SAFETY * 2 * 4 * n / throughput
    return min(DEFAULT_ROUND_TIMEOUT_S, DEFAULT_INVITE_S + DEFAULT_SLACK_S + transfer)


def measure(
    n: int,
    rtt_ms: float,
    mbit: float | None,
    *,
    k: int = 4,
    rounds: int = 3,
    loss: float = 0.0,
    bulk: bool = True,
    congestion: str | None = None,
    deadlines: str = "generous",
    round_keys: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Start a lab of k peers (every path: this RTT, loss; each access link: mbit), run one
    warm-up round and ``rounds`` timed ones initiated by peer 0 (fresh processes), and return
    the figures: round_s (median), each round's seconds, the lower bound, bytes, the deadline
    a default-configured peer would give the first round and later ones, and how the
    frames travelled (bulk channel or libp2p). ``deadlines``: "generous" (none in the way)
    or "default" (a deployed peer's: rounds that do not fit abort, and are counted), with
    ``round_keys`` set in its ``[round]`` section (e.g. assumed_mbit, round_timeout_s)."""
    seeds = [os.urandom(32).hex() for _ in range(k)]
    with NetLab(uniform(k, rtt_ms, mbit, loss), congestion=congestion) as lab:
        work = Path(tempfile.mkdtemp(prefix="wan-rounds-"))
        spec = {
            "seeds": seeds,
            "ips": [lab.ip(i) for i in range(k)],
            "n": n,
            "rounds": rounds,
            "bulk": bulk,
            "deadlines": deadlines,
            "round": dict(round_keys or {}),
        }
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(spec))
        argv = [sys.executable, "-m", __name__, "child", str(spec_path)]
        children = [
            lab.popen(
                i,
                [*argv, str(i)],
                stdout=subprocess.PIPE if i == 0 else subprocess.DEVNULL,
                stderr=open(work / f"child-{i}.log", "w"),  # noqa: SIM115 - the child's
                text=True,
            )
            for i in range(k)
        ]
        try:
            output, _ = children[0].communicate(timeout=CHILD_TIMEOUT_S)
        finally:
            for child in children:
                if child.poll() is None:
                    child.terminate()
        lines = output.strip().splitlines()
        if children[0].returncode != 0 or not lines:
            log = (work / "child-0.log").read_text()[-3000:]
            raise RuntimeError(f"the initiator failed (exit {children[0].returncode}):\n{log}")
        figures = json.loads(lines[-1])
    bound = lower_bound_s(n, k, rtt_ms, mbit)
    seconds = figures["seconds"]
    round_s = statistics.median(seconds) if seconds else None  # None: no round finished
    return {
        "bench": "wan",
        "n": n,
        "model_mb": round(4 * n / 1e6, 3),
        "k": k,
        "rtt_ms": rtt_ms,
        "mbit": mbit,
        "loss": loss,
        "congestion": congestion or default_congestion(),
        "transport": "bulk" if bulk else "libp2p",
        "deadlines": deadlines,
        "round_keys": dict(round_keys or {}),
        "round_s": None if round_s is None else round(round_s, 3),
        "rounds_s": [round(s, 3) for s in seconds],
        "lower_bound_s": round(bound, 3),
        "over_bound": None if round_s is None else round(round_s / bound, 2),
        "steps_s": round(MESSAGE_STEPS * rtt_ms / 2000, 3),
        "transfer_s": round(bound - MESSAGE_STEPS * rtt_ms / 2000, 3),
        "bytes_sent": figures["bytes_sent"],
        "aborted": figures["aborted"],
        "abort_reasons": figures["abort_reasons"],
        "first_deadline_s": round(default_deadline_s(n), 3),
        "steady_deadline_s": round(default_deadline_s(n, figures["throughput"]), 3),
        "fits_default_deadlines": bool(
            seconds
            and max(seconds) < default_deadline_s(n, figures["throughput"])
            and max(seconds[0], figures["warmup_s"]) < default_deadline_s(n)
        ),
        "bulk_frames_sent": figures["bulk_frames_sent"],
        "bulk_fallbacks": figures["bulk_fallbacks"],
    }


# ---- the peer processes ------------------------------------------------------------------


def child(spec: dict[str, Any], index: int) -> None:
    import trio

    trio.run(_child, spec, index)


async def _child(spec: dict[str, Any], index: int) -> None:
    import numpy as np
    import trio

    from gossiplearn.crypto.identity import Identity
    from gossiplearn.peer.config import RoundSection
    from gossiplearn.peer.net.engine import RoundEngine
    from gossiplearn.peer.net.host import ROUND_PROTOCOL, Admission, Host
    from gossiplearn.protocol.config import RoundConfig
    from gossiplearn.protocol.events import RoundAborted, RoundCancelled, RoundFinished
    from gossiplearn.protocol.node import Node

    identities = [Identity(bytes.fromhex(s)) for s in spec["seeds"]]
    me = identities[index]
    keys = [identity.public_key for identity in identities]
    admission = Admission(keys)
    host = Host(me, [f"/ip4/{spec['ips'][index]}/tcp/{PORT}"], admission)
    if spec["deadlines"] == "default":  # as a deployed peer: rounds past them abort
        config = RoundSection(group_size=len(keys), **spec["round"]).to_round_config()
    else:  # out of the way: how long rounds take, not whether they fit
        config = RoundConfig(
            max_group_size=len(keys),
            round_timeout_ms=3_600_000,
            invite_timeout_ms=60_000,
            assumed_bytes_per_s=100_000,  # a deadline scaled to 0.1 MB/s: an hour, the cap
        )
    node = Node(me, config, admitted=admission, now_ms=int(time.time() * 1000))
    outcome: dict[str, Any] = {}
    round_over = trio.Event()
    fresh = trio.Event()
    vector = np.random.default_rng(index).normal(0, 0.1, spec["n"]).astype(np.float32)

    def on_action(action: object) -> None:
        if isinstance(action, RoundFinished | RoundAborted | RoundCancelled):
            outcome["last"] = action
            round_over.set()
            fresh.set()

    engine = RoundEngine(host, node, on_action, bulk_port=0 if spec["bulk"] else None)
    host.handle(ROUND_PROTOCOL, engine.handle_stream)

    async def keep_contributing() -> None:
        nonlocal fresh
        step = 0
        while True:
            step += 1
            await engine.set_contribution(vector + np.float32(step * 1e-6), 1, b"w" * 32)
            await fresh.wait()
            fresh = trio.Event()

    async with host.run(), trio.open_nursery() as nursery:
        for key, ip in zip(keys, spec["ips"], strict=True):
            if key != me.public_key:
                host.remember_addrs(key, [f"/ip4/{ip}/tcp/{PORT}/p2p/{_peer_id(key)}"])
        nursery.start_soon(engine.run)
        nursery.start_soon(keep_contributing)
        if index != 0:
            await trio.sleep_forever()
        others = keys[1:]
        with trio.fail_after(120):
            for key in others:
                while True:
                    try:
                        await host.open_stream(key, ROUND_PROTOCOL, timeout_s=10)
                        break
                    except Exception:
                        await trio.sleep(0.5)
        seconds: list[float] = []
        sent: list[int] = []
        aborted = 0
        reasons: list[str] = []
        while len(seconds) < spec["rounds"] + 1:
            round_over = trio.Event()
            await trio.sleep(1.0)  # every member has finished the last round and trained
            began = time.perf_counter()
            await engine.start_round(others)
            await round_over.wait()
            result = outcome["last"]
            if isinstance(result, RoundFinished):
                seconds.append(time.perf_counter() - began)
                sent.append(result.stats.bytes_sent)
            elif isinstance(result, RoundAborted):
                aborted += 1
                reasons.append(result.reason)
                print(
                    f"round aborted: {result.reason} after {time.perf_counter() - began:.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
                if aborted > 5:  # the deadlines cannot hold here: say so, and stop
                    break
        print(
            json.dumps(
                {
                    "seconds": seconds[1:],
                    "warmup_s": seconds[0] if seconds else None,
                    "bytes_sent": sent[-1] if sent else None,
                    "aborted": aborted,
                    "abort_reasons": reasons,
                    "throughput": node._throughput,
                    "bulk_frames_sent": engine.bulk_frames_sent,
                    "bulk_fallbacks": engine.bulk_fallbacks,
                }
            ),
            flush=True,
        )
        nursery.cancel_scope.cancel()


def _peer_id(key: bytes) -> str:
    from gossiplearn.crypto.identity import peer_id_from_public_key

    return peer_id_from_public_key(key)


# ---- the plot --------------------------------------------------------------------------------


def plot(lines: Sequence[dict[str, Any]], path: Path) -> None:
    """Round time against RTT, a line per (model, bandwidth), the lower bound dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [
        line
        for line in lines
        if line["round_s"] is not None
        and line.get("deadlines", "generous") == "generous"
        and not line["loss"]
    ]
    models = sorted({line["n"] for line in lines})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for axis, n in zip(axes[0], models, strict=True):
        for mbit in sorted({line["mbit"] for line in lines if line["n"] == n}):
            points = sorted(
                (line["rtt_ms"], line["round_s"], line["lower_bound_s"])
                for line in lines
                if line["n"] == n and line["mbit"] == mbit
            )
            rtts = [p[0] for p in points]
            (drawn,) = axis.plot(rtts, [p[1] for p in points], "o-", label=f"{mbit:g} Mbit/s")
            axis.plot(rtts, [p[2] for p in points], "--", color=drawn.get_color(), alpha=0.6)
        mb = 4 * n / 1e6
        axis.set_title(f"{n:,} parameters ({mb:.3g} MB), 4 members")
        axis.set_xlabel("round trip time (ms)")
        axis.set_ylabel("round time (s)")
        axis.set_yscale("log")
        axis.grid(True, alpha=0.3)
        axis.legend(title="measured; dashed: lower bound", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 3 and args[0] == "child":
        child(json.loads(Path(args[1]).read_text()), int(args[2]))
        return 0
    print(
        "usage: python -m gossiplearn.testing.scenarios.wan_rounds child SPEC.json INDEX",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
