"""Pairwise masks: the PRG is libsodium's, masks cancel bit-exactly in the ring sum."""

import nacl.bindings
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossiplearn.crypto.agreement import EphemeralKey, pair_seed
from gossiplearn.crypto.identity import Identity
from gossiplearn.crypto.masks import apply_pairwise_masks, prg, prg_at
from gossiplearn.crypto.ring import decode, encode


def test_prg_is_libsodium_deterministic_stream():
    seed = bytes(range(32))
    assert prg(seed, 1000).tobytes() == nacl.bindings.randombytes_buf_deterministic(4000, seed)
    assert prg(seed, 10, np.uint64).tobytes() == nacl.bindings.randombytes_buf_deterministic(
        80, seed
    )


def test_prg_is_chacha20_ietf_keystream():
    # Independent of libsodium: randombytes_buf_deterministic is specified as the ChaCha20
    # (IETF) keystream under the seed with nonce "LibsodiumDRG", so any conforming ChaCha20
    # gives the same masks on any platform.
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    seed = bytes(range(100, 132))
    counter_and_nonce = (0).to_bytes(4, "little") + b"LibsodiumDRG"
    keystream = Cipher(algorithms.ChaCha20(seed, counter_and_nonce), mode=None).encryptor()
    assert prg(seed, 5000).tobytes() == keystream.update(bytes(20000))
    assert prg(bytes(32), 2).tobytes().hex() == "a11f8f12d0876f73"


@given(
    offset=st.integers(0, 3000),
    count=st.integers(0, 1100),
    dtype=st.sampled_from([np.uint8, np.uint16, np.uint32, np.uint64]),
)
@settings(max_examples=60)
def test_prg_at_is_the_same_stream_from_any_offset(offset, count, dtype):
    # The round streams: a member masks each shard just before sending it, with the masks
    # of that range only; they must be the same elements as the whole vector's masks.
    seed = bytes(range(7, 39))
    whole = prg(seed, offset + count, dtype)
    assert np.array_equal(prg_at(seed, offset, count, dtype), whole[offset:])


def test_masks_applied_shard_by_shard_equal_the_whole_vector_s():
    seeds = {0: b"\x01" * 32, 2: b"\x02" * 32}
    vector = np.arange(10_007, dtype=np.uint32)
    whole = apply_pairwise_masks(vector.copy(), 1, seeds)
    pieces = vector.copy()
    for start in range(0, pieces.size, 1_000):
        apply_pairwise_masks(pieces[start : start + 1_000], 1, seeds, offset=start)
    assert np.array_equal(whole, pieces)


def test_prg_prefix_property_and_seed_sensitivity():
    seed = b"\x09" * 32
    assert np.array_equal(prg(seed, 100)[:10], prg(seed, 10))
    assert not np.array_equal(prg(seed, 10), prg(b"\x0a" + seed[1:], 10))


def test_prg_writes_into_out_and_checks_it():
    out = np.empty(16, np.uint32)
    assert prg(b"\x01" * 32, 16, out=out) is out
    with pytest.raises(ValueError):
        prg(b"\x01" * 32, 16, out=np.empty(15, np.uint32))
    with pytest.raises(ValueError):
        prg(b"\x01" * 31, 4)


def _group_seeds(k: int, group: bytes) -> list[dict[int, bytes]]:
    """Every member's {other index: shared seed}, derived as a real group would."""
    identities = [Identity.generate() for _ in range(k)]
    ephemeral = [EphemeralKey.generate() for _ in range(k)]
    return [
        {
            j: pair_seed(
                ephemeral[i],
                ephemeral[j].public_key,
                group,
                identities[i].public_key,
                identities[j].public_key,
                b"mask",
            )
            for j in range(k)
            if j != i
        }
        for i in range(k)
    ]


@given(
    k=st.integers(3, 8),
    n=st.integers(1, 3000),
    frac_bits=st.integers(12, 22),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=60)
def test_ring_sum_of_masked_vectors_equals_plain_weighted_sum(k, n, frac_bits, seed):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(0, 4, size=(k, n)).astype(np.float32)
    weights = rng.integers(1, 1000, size=k)
    total_weight = int(weights.sum())
    seeds = _group_seeds(k, rng.bytes(16))

    plain_sum = np.zeros(n, np.uint32)
    masked_sum = np.zeros(n, np.uint32)
    for i in range(k):
        encoded, clipped = encode(vectors[i], frac_bits, scale=weights[i] / total_weight)
        assert clipped == 0
        plain_sum += encoded
        masked = apply_pairwise_masks(encoded.copy(), i, seeds[i])
        assert not np.array_equal(masked, encoded)
        masked_sum += masked

    assert np.array_equal(masked_sum, plain_sum)  # bit-exact in the ring
    average = np.average(vectors.astype(np.float64), axis=0, weights=weights)
    error = np.abs(decode(masked_sum, frac_bits, dtype=np.float64) - average)
    assert error.max() <= k * 2.0**-frac_bits


def test_a_single_masked_vector_looks_uniform():
    # With two or more peers' masks on it, a member's vector of zeros is indistinguishable from
    # uniform noise: its bytes' mean and spread match a uniform distribution's.
    masked = apply_pairwise_masks(
        np.zeros(200_000, np.uint32), 1, {0: b"\x01" * 32, 2: b"\x02" * 32}
    )
    as_unit = masked.astype(np.float64) / 2**32
    assert abs(as_unit.mean() - 0.5) < 0.01
    assert abs(as_unit.std() - (1 / 12) ** 0.5) < 0.01


def test_masks_refuse_floats_and_self_seed():
    with pytest.raises(TypeError):
        apply_pairwise_masks(np.zeros(4, np.float32), 0, {1: b"\x01" * 32})
    with pytest.raises(ValueError):
        apply_pairwise_masks(np.zeros(4, np.uint32), 0, {0: b"\x01" * 32})


def test_masks_work_on_uint64_scalars():
    seeds = _group_seeds(3, b"w" * 16)
    weights = [5, 7, 11]
    shares = [
        apply_pairwise_masks(np.array([w], np.uint64), i, seeds[i]) for i, w in enumerate(weights)
    ]
    assert int(sum(int(s[0]) for s in shares) % 2**64) == sum(weights)
