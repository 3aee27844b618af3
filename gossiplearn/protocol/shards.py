"""Model shards: a flat array split into signed pieces of at most ~1 MiB, and joined back.

Each shard carries (index, total, offset, dtype, length, digest) so the receiver can check the
set before trusting it: missing, duplicate, overlapping or mistyped shards are errors, never
silently zero-filled or truncated.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from blake3 import blake3

from gossiplearn.protocol.errors import SchemaViolation, ShardError
from gossiplearn.protocol.schema import Record, binary, text, uint

MAX_SHARD_BYTES = 1 << 20
#: Largest vector a shard set may describe (elements); 2^34 leaves room beyond any model we ship.
MAX_ELEMENTS = 1 << 34
MAX_SHARDS = 1 << 20
DIGEST_BYTES = 32

#: Wire dtype names: ring elements (u4 vectors, u8 scalars) and plain floats (benchmark only).
DTYPES: dict[str, np.dtype] = {
    "u1": np.dtype("<u1"),
    "u2": np.dtype("<u2"),
    "u4": np.dtype("<u4"),
    "u8": np.dtype("<u8"),
    "f4": np.dtype("<f4"),
}


#: BLAKE3 in key-derivation mode with this context: domain-separated from every other hash
#: of the protocol. BLAKE3 (not BLAKE2b, as before round v2 was released) because every shard
#: is hashed at its sender and again at its receiver: ~4-7 GB/s against BLAKE2b's ~0.9 GB/s.
_SHARD_CONTEXT = "gossiplearn round v2 shard digest"


def shard_digest(data: bytes | memoryview) -> bytes:
    return blake3(data, derive_key_context=_SHARD_CONTEXT).digest(DIGEST_BYTES)


SHARD_SCHEMA = Record(
    "shard",
    (
        ("index", uint(MAX_SHARDS - 1)),
        ("total", uint(MAX_SHARDS, minimum=1)),
        ("offset", uint(MAX_ELEMENTS)),
        ("dtype", text(2, choices=DTYPES)),
        ("length", uint(MAX_SHARD_BYTES)),
        ("digest", binary(DIGEST_BYTES)),
        ("data", binary(max_size=MAX_SHARD_BYTES)),
    ),
)


@dataclass(frozen=True)
class Shard:
    index: int
    total: int
    offset: int  # in elements
    dtype: str
    length: int  # in elements
    digest: bytes
    data: bytes

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise SchemaViolation(f"shard dtype {self.dtype!r} is not one of {sorted(DTYPES)}")
        if self.index >= self.total:
            raise SchemaViolation(f"shard index {self.index} >= total {self.total}")
        if len(self.data) != self.length * DTYPES[self.dtype].itemsize:
            raise SchemaViolation(
                f"shard holds {len(self.data)} bytes, declared {self.length} x {self.dtype}"
            )

    def to_wire(self) -> dict[str, object]:
        return {name: getattr(self, name) for name, _ in SHARD_SCHEMA.fields}

    @classmethod
    def from_wire(cls, value: object, where: str = "shard") -> Shard:
        return cls(**SHARD_SCHEMA.validate(value, where))

    def detached(self) -> DetachedShard:
        """This shard without its data: what its sender's signature covers (see envelope.py)."""
        return DetachedShard(
            self.index, self.total, self.offset, self.dtype, self.length, self.digest, b""
        )

    def array(self) -> np.ndarray:
        """The shard's elements (read-only view of ``data``)."""
        return np.frombuffer(self.data, dtype=DTYPES[self.dtype])


@dataclass(frozen=True)
class DetachedShard(Shard):
    """A shard's header (digest included) without its data.

    Signatures cover a shard's digest, not its data (the receiver checks the data against the
    digest), so a signed message's header alone is a compact, verifiable statement of what
    its sender sent: members relay such statements as evidence (see protocol/evidence.py).
    """

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise SchemaViolation(f"shard dtype {self.dtype!r} is not one of {sorted(DTYPES)}")
        if self.index >= self.total:
            raise SchemaViolation(f"shard index {self.index} >= total {self.total}")
        if self.data:
            raise SchemaViolation("a detached shard carries no data")


def dtype_name(dtype: np.dtype) -> str:
    for name, wire in DTYPES.items():
        if np.dtype(dtype) == wire or np.dtype(dtype) == wire.newbyteorder("="):
            return name
    raise ShardError(f"dtype {dtype} has no wire form (expected one of {sorted(DTYPES)})")


def shard_layout(length: int, itemsize: int, max_bytes: int = MAX_SHARD_BYTES) -> tuple[int, int]:
    """(elements per shard, number of shards) of a vector of ``length`` elements cut into
    shards of at most ``max_bytes``: the layout :func:`split_shards` uses, known before any
    element is (a streamed part's shards name their total from the first one)."""
    if not 0 < max_bytes <= MAX_SHARD_BYTES:
        raise ValueError(f"max_bytes must be in (0, {MAX_SHARD_BYTES}]")
    per_shard = max(1, max_bytes // itemsize)
    return per_shard, max(1, -(-length // per_shard))


def make_shard(piece: np.ndarray, index: int, total: int, offset: int) -> Shard:
    """Shard ``index`` of ``total`` holding ``piece`` (1-D), which starts at element ``offset``."""
    name = dtype_name(piece.dtype)
    data = np.ascontiguousarray(piece, dtype=DTYPES[name]).tobytes()
    return Shard(index, total, offset, name, piece.size, shard_digest(data), data)


def split_shards(array: np.ndarray, max_bytes: int = MAX_SHARD_BYTES) -> list[Shard]:
    """Split a 1-D array into contiguous shards of at most ``max_bytes`` each.

    An empty array is one empty shard, so a shard set always says its own total.
    """
    wire = DTYPES[dtype_name(array.dtype)]
    flat = np.ascontiguousarray(array.reshape(-1), dtype=wire)
    per_shard, total = shard_layout(flat.size, wire.itemsize, max_bytes)
    return [
        make_shard(
            flat[index * per_shard : (index + 1) * per_shard], index, total, index * per_shard
        )
        for index in range(total)
    ]


def ordered_shards(
    shards: Iterable[Shard], *, dtype: str, length: int, digests_checked: bool = False
) -> list[Shard]:
    """A complete shard set in order, checked to cover exactly ``length`` elements of
    ``dtype`` with no gap or overlap, without copying any data.

    Raises :class:`ShardError` for a missing, duplicate, overlapping or mistyped shard, a
    digest mismatch, or a set that does not cover exactly ``length`` elements.
    ``digests_checked``: every shard's data was already checked against its digest (shards
    of verified envelopes), so it is not hashed again.
    """
    if dtype not in DTYPES:
        raise ShardError(f"unknown dtype {dtype!r}")
    by_index: dict[int, Shard] = {}
    total = None
    for shard in shards:
        if shard.dtype != dtype:
            raise ShardError(f"shard {shard.index} has dtype {shard.dtype}, expected {dtype}")
        if total is None:
            total = shard.total
        elif shard.total != total:
            raise ShardError(f"shard {shard.index} says total {shard.total}, others say {total}")
        if shard.index in by_index:
            raise ShardError(f"duplicate shard {shard.index}")
        by_index[shard.index] = shard
    if total is None:
        raise ShardError("no shards")
    missing = [i for i in range(total) if i not in by_index]
    if missing:
        raise ShardError(f"missing shards {missing[:8]}{'...' if len(missing) > 8 else ''}")
    ordered = []
    position = 0
    for index in range(total):
        shard = by_index[index]
        if shard.offset != position:
            kind = "overlaps" if shard.offset < position else "leaves a gap before"
            raise ShardError(f"shard {index} at offset {shard.offset} {kind} offset {position}")
        end = position + shard.length
        if end > length:
            raise ShardError(f"shard {index} ends at {end}, beyond length {length}")
        if not digests_checked and shard_digest(shard.data) != shard.digest:
            raise ShardError(f"shard {index} digest mismatch")
        ordered.append(shard)
        position = end
    if position != length:
        raise ShardError(f"shards cover {position} elements, expected {length}")
    return ordered


def join_shards(
    shards: Iterable[Shard], *, dtype: str, length: int, digests_checked: bool = False
) -> np.ndarray:
    """Join a complete shard set into one array of ``length`` elements of ``dtype`` (checked
    as by :func:`ordered_shards`)."""
    ordered = ordered_shards(shards, dtype=dtype, length=length, digests_checked=digests_checked)
    out = np.empty(length, dtype=DTYPES[dtype])
    for shard in ordered:
        out[shard.offset : shard.offset + shard.length] = shard.array()
    return out
