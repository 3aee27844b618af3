"""Round time against backbone size: gossiplearn secure, gossiplearn plaintext and hivemind.

For each --n (default 1M, 3M, 10M, 30M, 100M float32), alternates hivemind's all-reduce
(skipped without hivemind, see compare_hivemind.py) with gossiplearn's secure and plaintext
rounds (4 processes each, benchmarks/round_bench.py --net libp2p), prints one JSON line per
n and, with --plot PATH, draws the three curves (log-log) into a PNG.

Usage: python benchmarks/round_sizes.py [--n 1e6,3e6,1e7,3e7,1e8] [--rounds 2] [--steps 2]
       [--hivemind-python PATH] [--plot docs/round_time_vs_size.png] [--from-json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_hivemind import find_hivemind, hivemind_steps  # noqa: E402
from round_bench import libp2p_rounds  # noqa: E402


def measure(n: int, rounds: int, steps: int, hivemind: str | None) -> dict[str, object]:
    line: dict[str, object] = {"bench": "round_sizes", "n": n, "model_mb": round(4 * n / 1e6, 1)}
    if hivemind is not None:
        line["hivemind_s"] = round(statistics.median(hivemind_steps(hivemind, n, steps)), 3)
    line["secure_s"] = round(libp2p_rounds(n, rounds, "secure")["round_s"], 3)
    line["plain_s"] = round(libp2p_rounds(n, rounds, "plain")["round_s"], 3)
    if hivemind is not None:
        line["secure_over_hivemind"] = round(line["secure_s"] / line["hivemind_s"], 3)  # type: ignore[operator]
    return line


def plot(lines: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [int(line["n"]) for line in lines]  # type: ignore[call-overload]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for key, label, style in (
        ("secure_s", "gossiplearn, secure round", "o-"),
        ("plain_s", "gossiplearn, plaintext variant", "s--"),
        ("hivemind_s", "hivemind 1.1.12, plaintext all-reduce", "^-"),
    ):
        points = [(n, line[key]) for n, line in zip(sizes, lines, strict=True) if key in line]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], style, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("backbone size (float32 parameters)")
    ax.set_ylabel("round / all-reduce step time (s)")
    ax.set_title("4 processes on one 2-core machine, 127.0.0.1")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="1e6,3e6,1e7,3e7,1e8")
    parser.add_argument("--rounds", type=int, default=2, help="timed gossiplearn rounds")
    parser.add_argument("--steps", type=int, default=2, help="timed hivemind steps")
    parser.add_argument("--hivemind-python")
    parser.add_argument("--plot", type=Path, help="write the PNG here")
    parser.add_argument("--from-json", type=Path, help="only plot these JSON lines")
    args = parser.parse_args()
    if args.from_json:
        lines = [json.loads(x) for x in args.from_json.read_text().splitlines() if x.strip()]
    else:
        hivemind, why = find_hivemind(args.hivemind_python)
        if hivemind is None:
            print(json.dumps({"bench": "round_sizes", "hivemind": f"skipped: {why}"}))
        lines = []
        for n in (int(float(x)) for x in args.n.split(",")):
            line = measure(n, args.rounds, args.steps, hivemind)
            print(json.dumps(line), flush=True)
            lines.append(line)
    if args.plot:
        plot(lines, args.plot)


if __name__ == "__main__":
    main()
