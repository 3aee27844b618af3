"""Round time across a WAN against round trip time and bandwidth, beside the lower bound.

For each backbone size (--n: "digits", the built-in digits MLP's 8,320 parameters, and a 10M
backbone) and each (RTT, bandwidth) of the grid, 4 peer processes run in the network lab
(gossiplearn/testing/netlab.py: a namespace each, tbf on every access link, the RTT on every
path), each a libp2p host driving the round engine (no training); peer 0 initiates one
warm-up round and --rounds timed ones (gossiplearn/testing/scenarios/wan_rounds.py). One JSON line per
point: bench, n, model_mb, k, rtt_ms, mbit, loss, congestion (the lab's TCP congestion
control), transport, round_s (median of the timed rounds), rounds_s, lower_bound_s
(7 x RTT / 2 + 2 (k - 1) / k x 4n / bandwidth), over_bound, steps_s and transfer_s (the
bound's two terms), bytes_sent (by the initiator in one round), aborted (none expected: the
children run without deadlines), first_deadline_s and steady_deadline_s (the deadline a
default-configured peer gives the first round, at its assumed 10 MB/s, and later ones, at the
throughput it measured), fits_default_deadlines, bulk_frames_sent, bulk_fallbacks.
With --deadlines default the peers run a deployed peer's deadlines instead of none: rounds
that do not fit abort (aborted, abort_reasons; round_s null if none finished), and --round
KEY=VALUE sets a key of their [round] section (round_keys).

Needs root (network namespaces). With --plot, draws round time against RTT (a line per
bandwidth, the bound dashed) from the lines printed (or --from-json FILE).

Usage: python benchmarks/wan_bench.py [--n digits,1e7] [--rtt 1,50,150,300]
       [--mbit 10,100,1000] [--rounds 3] [--loss 0] [--congestion bbr|reno]
       [--transport bulk|libp2p] [--deadlines generous|default] [--round KEY=VALUE]
       [--plot docs/wan_round_time.png] [--from-json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gossiplearn.testing.netlab import unavailable_reason
from gossiplearn.testing.scenarios.wan_rounds import digits_backbone_size, measure, plot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="digits,1e7", help='backbone sizes ("digits" or a count)')
    parser.add_argument("--rtt", default="1,50,150,300", help="round trip times, ms")
    parser.add_argument("--mbit", default="10,100,1000", help="access bandwidths, Mbit/s")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per point")
    parser.add_argument("--loss", type=float, default=0.0, help="packet loss per path")
    parser.add_argument("--congestion", default="", help="TCP congestion control (default: host's)")
    parser.add_argument("--transport", choices=["bulk", "libp2p"], default="bulk")
    parser.add_argument(
        "--deadlines",
        choices=["generous", "default"],
        default="generous",
        help="generous: none in the way (round times); default: a deployed peer's (aborts)",
    )
    parser.add_argument(
        "--round",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --deadlines default: a [round] key of the peers (assumed_mbit, round_timeout_s)",
    )
    parser.add_argument("--plot", type=Path, help="draw the lines into this PNG")
    parser.add_argument("--from-json", type=Path, help="plot these JSON lines, measure nothing")
    args = parser.parse_args()
    if args.from_json:
        lines = [json.loads(t) for t in args.from_json.read_text().splitlines() if t.strip()]
    else:
        reason = unavailable_reason()
        if reason is not None:
            sys.exit(f"wan_bench: the network lab is unavailable: {reason}")
        lines = []
        for size in args.n.split(","):
            n = digits_backbone_size() if size == "digits" else int(float(size))
            for mbit in (float(x) for x in args.mbit.split(",")):
                for rtt in (float(x) for x in args.rtt.split(",")):
                    line = measure(
                        n,
                        rtt,
                        mbit,
                        rounds=args.rounds,
                        loss=args.loss,
                        bulk=args.transport == "bulk",
                        congestion=args.congestion or None,
                        deadlines=args.deadlines,
                        round_keys={
                            k: float(v) for k, v in (kv.split("=", 1) for kv in args.round)
                        },
                    )
                    print(json.dumps(line), flush=True)
                    lines.append(line)
    if args.plot:
        plot(lines, args.plot)


if __name__ == "__main__":
    main()
