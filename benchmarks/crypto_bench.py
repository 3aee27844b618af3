"""Throughput of the crypto and wire-format hot paths. Prints one JSON line.

The scenario is gossiplearn/testing/scenarios/crypto.py. The line: bench, elements,
mask_mb_s (one pairwise mask, PRG plus ring add, over an --elements uint32 vector),
shard_verify_mb_s (decode_envelope of --shards signed 1 MiB PART shards),
shard_sign_mb_s (encode_envelope of the same), encode_mb_s / decode_mb_s (fixed-point ring
encoding of float32 and back), shard_frame_bytes, python, machine. Each figure is the median
of --repeats runs.

Usage: python benchmarks/crypto_bench.py [--elements 10000000] [--shards 32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json

from gossiplearn.testing.scenarios.crypto import crypto_figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=10_000_000)
    parser.add_argument("--shards", type=int, default=32, help="1 MiB shards per verify run")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(crypto_figures(args.elements, args.shards, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
