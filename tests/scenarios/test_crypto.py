"""The hot paths' throughput (gossiplearn/testing/scenarios/crypto.py, benchmarks/
crypto_bench.py's) on small vectors: every figure is measured, and the PART shards signed and
verified are round v3's (with a transcript)."""

from __future__ import annotations

from gossiplearn.testing.scenarios.crypto import crypto_figures


def test_crypto_figures_on_small_vectors() -> None:
    line = crypto_figures(elements=1 << 18, shards=1, repeats=1)
    assert line["bench"] == "crypto" and line["elements"] == 1 << 18
    for key in ("mask_mb_s", "shard_verify_mb_s", "shard_sign_mb_s", "encode_mb_s", "decode_mb_s"):
        assert line[key] > 0, key
    # One 1 MiB shard, its header, transcript and signature.
    assert 1 << 20 < line["shard_frame_bytes"] < (1 << 20) + 1024
