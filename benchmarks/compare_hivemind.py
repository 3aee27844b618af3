"""gossiplearn's secure round against hivemind's plaintext all-reduce, alternated in one run.

4 processes each side, one vector of --n float32 (default 10M, a 40 MB backbone), on
127.0.0.1. Each launch runs, in this order, hivemind (4 fresh processes, 1 + --steps
all-reduce steps), gossiplearn's secure round (4 fresh peer processes, 1 + --rounds rounds,
the daemon's round engine over libp2p with the bulk channel) and its plaintext variant; the
first step or round of each launch is a warm-up. Prints one JSON line per n:

- hivemind_step_s: median time of a hivemind all-reduce at peer 0, from the moment the four
  peers (their group already assembled, each waiting on its trigger) are released together
  until peer 0 holds the average. Its matchmaking (DHT look-ups, min_matchmaking_time) is
  left out, which favours hivemind: gossiplearn's time below includes its own matchmaking
  (INVITE, ACCEPT, ROSTER) and agreement step (CONFIRM).
- secure_round_s, plain_round_s: median round time at gossiplearn's initiator, from its
  INVITE to the average (benchmarks/round_bench.py --net libp2p).
- secure_over_hivemind, plain_over_hivemind: medians of the per-launch ratios.

hivemind runs in its own interpreter (--hivemind-python, or $HIVEMIND_PYTHON, or this one if
it can import hivemind); without one this prints a line saying it was skipped, and exits 0.
hivemind is not a dependency of gossiplearn. Set it up apart, e.g.:
  python3 -m venv /tmp/hivemind-venv && /tmp/hivemind-venv/bin/pip install torch==2.13.0 \\
  && /tmp/hivemind-venv/bin/pip install hivemind==1.1.12

Usage: python benchmarks/compare_hivemind.py [--n 10000000] [--launches 2] [--steps 3]
       [--rounds 3] [--hivemind-python PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from round_bench import libp2p_rounds  # noqa: E402

PEERS = 4

#: One hivemind peer. argv: index, n, steps, initial peer multiaddr (or "-"). Peer 0 prints
#: its multiaddrs first. Then, per step: prints "ready" once its group is assembled and it
#: waits on its trigger, reads "go", triggers, and prints {"t": seconds until its average}.
HIVEMIND_PEER = r"""
import json, sys, time
import torch
import hivemind
from hivemind.averaging.control import AveragingStage

index, n, steps, initial = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(1)
dht = hivemind.DHT(
    start=True,
    host_maddrs=["/ip4/127.0.0.1/tcp/0"],
    initial_peers=None if initial == "-" else [initial],
)
if index == 0:
    print(json.dumps([str(a) for a in dht.get_visible_maddrs()]), flush=True)
tensor = torch.randn(n, generator=torch.Generator().manual_seed(index))
averager = hivemind.averaging.DecentralizedAverager(
    [tensor],
    dht,
    prefix="bench",
    target_group_size=4,
    min_group_size=4,
    min_matchmaking_time=2.0,
    request_timeout=1.0,
    start=True,
)
for step in range(steps):
    control = averager.step(wait=False, require_trigger=True, timeout=300)
    while control.stage != AveragingStage.AWAITING_TRIGGER:
        if control.done():
            control.result()  # raises what failed
            raise RuntimeError("step ended before its group was assembled")
        time.sleep(0.005)
    print("ready", flush=True)
    assert sys.stdin.readline().strip() == "go"
    began = time.perf_counter()
    control.allow_allreduce()
    control.result()
    print(json.dumps({"t": time.perf_counter() - began}), flush=True)
averager.shutdown()
dht.shutdown()
"""


def find_hivemind(explicit: str | None) -> tuple[str | None, str]:
    """(interpreter, why not) for the interpreter that imports hivemind."""
    candidates = [c for c in (explicit, os.environ.get("HIVEMIND_PYTHON"), sys.executable) if c]
    for python in candidates:
        try:
            found = subprocess.run(
                [python, "-c", "import hivemind; print(hivemind.__version__)"],
                capture_output=True,
                text=True,
                timeout=120,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if found.returncode == 0:
            return python, found.stdout.strip()
    return None, "no interpreter given with --hivemind-python or $HIVEMIND_PYTHON imports it"


def hivemind_steps(python: str, n: int, steps: int) -> list[float]:
    """1 + ``steps`` all-reduce steps of 4 fresh peers; peer 0's times after the warm-up."""
    code = HIVEMIND_PEER
    first = subprocess.Popen(
        [python, "-c", code, "0", str(n), str(steps + 1), "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    peers = [first]
    try:
        assert first.stdout is not None
        maddrs = json.loads(first.stdout.readline())
        initial = next((a for a in maddrs if "127.0.0.1" in a), maddrs[0])
        for i in range(1, PEERS):
            peers.append(
                subprocess.Popen(
                    [python, "-c", code, str(i), str(n), str(steps + 1), initial],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
            )
        times = []
        for _ in range(steps + 1):
            for peer in peers:  # every group member waits on its trigger
                assert peer.stdout is not None
                line = peer.stdout.readline()
                if line.strip() != "ready":
                    raise RuntimeError(f"hivemind peer said {line!r}")
            for peer in peers:  # released together
                assert peer.stdin is not None
                peer.stdin.write("go\n")
                peer.stdin.flush()
            results = []
            for peer in peers:
                assert peer.stdout is not None
                results.append(json.loads(peer.stdout.readline())["t"])
            times.append(results[0])
        for peer in peers:
            peer.wait(timeout=60)
        return times[1:]
    finally:
        for peer in peers:
            if peer.poll() is None:
                peer.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="10000000", help="vector lengths, comma-separated")
    parser.add_argument("--launches", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed hivemind steps per launch")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per launch")
    parser.add_argument("--hivemind-python", help="an interpreter that can import hivemind")
    parser.add_argument("--no-plain", action="store_true", help="skip gossiplearn plaintext")
    args = parser.parse_args()
    python, version = find_hivemind(args.hivemind_python)
    if python is None:
        print(json.dumps({"bench": "compare_hivemind", "skipped": f"hivemind absent: {version}"}))
        return
    for n in (int(float(x)) for x in args.n.split(",")):
        hive, secure, plain, ratios, plain_ratios = [], [], [], [], []
        began = time.perf_counter()
        for _ in range(args.launches):
            h = statistics.median(hivemind_steps(python, n, args.steps))
            s = libp2p_rounds(n, args.rounds, "secure")["round_s"]
            hive.append(h)
            secure.append(s)
            ratios.append(s / h)
            if not args.no_plain:
                p = libp2p_rounds(n, args.rounds, "plain")["round_s"]
                plain.append(p)
                plain_ratios.append(p / h)
        line = {
            "bench": "compare_hivemind",
            "n": n,
            "peers": PEERS,
            "hivemind": version,
            "launches": args.launches,
            "hivemind_step_s": round(statistics.median(hive), 3),
            "secure_round_s": round(statistics.median(secure), 3),
            "secure_over_hivemind": round(statistics.median(ratios), 3),
            "per_launch": [
                {"hivemind_s": round(h, 3), "secure_s": round(s, 3)}
                for h, s in zip(hive, secure, strict=True)
            ],
            "wall_s": round(time.perf_counter() - began, 1),
        }
        if plain:
            line["plain_round_s"] = round(statistics.median(plain), 3)
            line["plain_over_hivemind"] = round(statistics.median(plain_ratios), 3)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
