"""Throughput of the crypto and wire-format hot paths (benchmarks/crypto_bench.py's figures).

- mask_mb_s: PRG (libsodium ChaCha20) plus ring add of one pairwise mask over a uint32
  vector, in MB of vector per second.
- shard_verify_mb_s: decode_envelope (limits, decode, schema, canonical check, Ed25519 verify,
  replay) of 1 MiB signed PART shards, in MB of frames per second.
- shard_sign_mb_s: encode_envelope (canonical msgpack + Ed25519 sign) of the same shards.
- encode_mb_s / decode_mb_s: fixed-point ring encoding of float32 vectors and back.

Each figure is the median of ``repeats`` runs after a warm-up.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from gossiplearn.crypto import Identity, apply_pairwise_masks, decode, encode
from gossiplearn.protocol import Part, ReplayGuard, decode_envelope, encode_envelope, split_shards


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: page faults, first-call overheads
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def crypto_figures(
    elements: int = 10_000_000, shards: int = 32, repeats: int = 5
) -> dict[str, Any]:
    """The figures over vectors of ``elements`` and ``shards`` 1 MiB PART shards."""
    rng = np.random.default_rng(0)
    vector = rng.integers(0, 2**32, size=elements, dtype=np.uint32)
    seed = rng.bytes(32)
    vector_mb = vector.nbytes / 1e6
    mask_s = median_seconds(lambda: apply_pairwise_masks(vector, 0, {1: seed}), repeats)

    floats = rng.normal(0, 1, size=elements).astype(np.float32)
    encoded, _ = encode(floats)
    encode_s = median_seconds(lambda: encode(floats), repeats)
    decode_s = median_seconds(lambda: decode(encoded), repeats)

    sender, receiver = Identity(rng.bytes(32)), Identity(rng.bytes(32))
    per_shard = (1 << 20) // 4
    pieces = split_shards(vector[: per_shard * shards])
    group, transcript = rng.bytes(16), rng.bytes(32)

    def sign_all() -> list[bytes]:
        return [
            encode_envelope(
                sender,
                sender.public_key,
                receiver.public_key,
                Part(transcript, 0, shard),
                group=group,
                seq=i,
                ts=1_000,
            )
            for i, shard in enumerate(pieces)
        ]

    frames = sign_all()
    frames_mb = sum(len(f) for f in frames) / 1e6

    def verify_all() -> None:
        guard = ReplayGuard()
        for frame in frames:
            decode_envelope(frame, recipient=receiver.public_key, now_ms=1_000, replay=guard)

    sign_s = median_seconds(sign_all, repeats)
    verify_s = median_seconds(verify_all, repeats)
    return {
        "bench": "crypto",
        "elements": elements,
        "mask_mb_s": round(vector_mb / mask_s, 1),
        "shard_verify_mb_s": round(frames_mb / verify_s, 1),
        "shard_sign_mb_s": round(frames_mb / sign_s, 1),
        "encode_mb_s": round(vector_mb / encode_s, 1),
        "decode_mb_s": round(vector_mb / decode_s, 1),
        "shard_frame_bytes": len(frames[0]),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
