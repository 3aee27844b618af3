"""The secure averaging round's cost: bytes on the wire and CPU over the plaintext butterfly.

The scenario is gossiplearn/testing/scenarios/rounds.py. ``--net memory`` runs k protocol
machines over the in-memory network in this process (no latency), so CPU time is the
protocol's own, and prints one JSON line per (k, n): bench, net, ring (--ring), k, n,
bytes_per_member_over_model (mean frame bytes a member sends / model bytes, 4n),
confirm_bytes_per_member (the agreement step's frames), hops (sequential message steps:
INVITE, ACCEPT, ROSTER, READY, PART, REDUCED, CONFIRM), secure_over_plain_cpu (CPU of the
secure round / the same round unmasked), secure_cpu_s and plain_cpu_s (all k members
together, the minimum over --repeats alternating runs after one untimed warm-up round).

``--net libp2p`` runs 4 peer processes on 127.0.0.1, each a libp2p host driving the same
machine through the daemon's round engine (no training), and prints one JSON line per n:
bench, net, transport, k, n, secure_round_s and plain_round_s (wall time of a round at the
initiator, from invitation to the average: median of --rounds after one warm-up round),
secure_over_plain_time, bytes_per_member_over_model (frame bytes the initiator sent / model
bytes), round_model_mb_s (4n / secure_round_s), stream_mb_s (one libp2p stream between two of
the processes, 64 MiB in 1 MiB frames), round_over_stream, round_wire_mb_s (every member's
wire bytes per second), tcp_mb_s (one raw TCP connection), round_wire_over_tcp,
bulk_frames_sent and bulk_fallbacks (``--transport libp2p``: the bulk channel off).

Usage: python benchmarks/round_bench.py --net memory [--k 3,4,8] [--n 1000000,10000000]
       [--repeats 2] [--ring 32|16|8]
       python benchmarks/round_bench.py --net libp2p [--n 1000000,10000000] [--rounds 3]
       [--transport bulk|libp2p]
"""

from __future__ import annotations

import argparse
import json

from gossiplearn.testing.scenarios.rounds import libp2p_figures, memory_figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", choices=["memory", "libp2p"], default="memory")
    parser.add_argument("--k", default="3,4,8", help="group sizes, comma-separated")
    parser.add_argument("--n", default="100000,1000000,10000000", help="vector lengths")
    parser.add_argument("--repeats", type=int, default=2, help="rounds per figure (min taken)")
    parser.add_argument("--rounds", type=int, default=3, help="libp2p: timed rounds per variant")
    parser.add_argument("--ring", type=int, choices=(32, 16, 8), default=32, help="memory: ring")
    parser.add_argument(
        "--transport",
        choices=["bulk", "libp2p"],
        default="bulk",
        help="libp2p: round parts over libp2p streams too (the bulk channel off)",
    )
    args = parser.parse_args()
    for n in (int(float(x)) for x in args.n.split(",")):
        if args.net == "libp2p":
            print(json.dumps(libp2p_figures(n, args.rounds, args.transport)), flush=True)
            continue
        for k in (int(x) for x in args.k.split(",")):
            print(json.dumps(memory_figures(k, n, args.repeats, args.ring)), flush=True)


if __name__ == "__main__":
    main()
