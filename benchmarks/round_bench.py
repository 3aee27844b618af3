"""The secure averaging round's cost: bytes on the wire and CPU over the plaintext butterfly.

Prints one JSON line per (k, n). ``--net memory`` runs k protocol machines over the in-memory
network in this process (no latency), so CPU time is the protocol's own: encoding, masking,
sharding, signing and verifying. Figures:

- bytes_per_member_over_model: mean frame bytes a member sends / model bytes (4n).
- secure_over_plain_cpu: CPU seconds of the secure round / the same round unmasked.
- secure_cpu_s, plain_cpu_s: those CPU seconds (all k members together), the minimum over
  --repeats alternating runs after one untimed warm-up round.

Usage: python benchmarks/round_bench.py --net memory [--k 3,4,8] [--n 1000000,10000000]
(--net libp2p, real peer processes, arrives with the daemon.)
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time

import numpy as np

from gossiplearn.crypto import Identity
from gossiplearn.protocol.plaintext import PlaintextNode
from gossiplearn.protocol.round import Node, RoundConfig, RoundFinished
from gossiplearn.sim.memnet import MemoryNetwork


def run_round(
    node_class: type[Node], k: int, vectors: np.ndarray, seed: int
) -> tuple[float, float]:
    """One round of k members; returns (CPU seconds, mean bytes sent per member)."""
    net = MemoryNetwork(seed=seed, latency_ms=1.0)
    config = RoundConfig(max_group_size=k, round_timeout_ms=3_600_000)
    for i in range(k):
        node = node_class(
            Identity(bytes([seed % 256, i + 1]) * 16),
            config,
            rng=random.Random(seed * 100 + i),
            now_ms=int(net.now_ms),
        )
        node.set_contribution(vectors[i], 100 + i, b"b" * 32)
        net.add(node)
    keys = list(net.nodes)
    gc.collect()
    start = time.process_time()
    net.start_round(keys[0])
    net.run()
    cpu = time.process_time() - start
    finished = [o for key in keys for o in net.outcomes[key] if isinstance(o, RoundFinished)]
    if len(finished) != k:
        raise RuntimeError(f"round did not finish at every member: {dict(net.outcomes)}")
    return cpu, sum(net.bytes_sent[key] for key in keys) / k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", choices=["memory", "libp2p"], default="memory")
    parser.add_argument("--k", default="3,4,8", help="group sizes, comma-separated")
    parser.add_argument("--n", default="100000,1000000,10000000", help="vector lengths")
    parser.add_argument("--repeats", type=int, default=2, help="rounds per figure (min taken)")
    args = parser.parse_args()
    if args.net == "libp2p":
        sys.exit("round_bench: --net libp2p needs the peer daemon, which is not built yet")

    for n in (int(float(x)) for x in args.n.split(",")):
        for k in (int(x) for x in args.k.split(",")):
            vectors = np.random.default_rng(n + k).normal(0, 1, size=(k, n)).astype(np.float32)
            # The first big round in a process pays for growing the heap (page faults); an
            # untimed warm-up keeps that out of whichever variant would run first.
            run_round(PlaintextNode, k, vectors, seed=99)
            secure, plain = [], []
            for seed in range(args.repeats):
                secure.append(run_round(Node, k, vectors, seed))
                plain.append(run_round(PlaintextNode, k, vectors, seed))
            secure_cpu = min(cpu for cpu, _ in secure)
            plain_cpu = min(cpu for cpu, _ in plain)
            print(
                json.dumps(
                    {
                        "bench": "round",
                        "net": args.net,
                        "k": k,
                        "n": n,
                        "bytes_per_member_over_model": round(secure[0][1] / (4 * n), 4),
                        "secure_over_plain_cpu": round(secure_cpu / plain_cpu, 3),
                        "secure_cpu_s": round(secure_cpu, 3),
                        "plain_cpu_s": round(plain_cpu, 3),
                    }
                ),
                flush=True,
            )
            del vectors
            gc.collect()


if __name__ == "__main__":
    main()
