"""The same round with masking switched off. For benchmarks only.

It exists to measure what secure aggregation costs (``secure_over_plain_cpu`` in
``benchmarks/round_bench.py``). Nothing in ``gossiplearn.peer`` or the CLI imports it, and no
config key selects it (a test checks both). It also cannot join a secure group by accident:
its schema hash is rewritten, so secure peers answer its invitations with BUSY.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from gossiplearn.protocol.aggregation import no_masks
from gossiplearn.protocol.node import Node


def plaintext_schema_hash(schema_hash: bytes) -> bytes:
    """The schema hash a plaintext node advertises: never equal to a secure node's."""
    return hashlib.blake2b(schema_hash, digest_size=32, person=b"gossiplearn.pln1").digest()


class PlaintextNode(Node):
    """A :class:`Node` whose parts and weights travel unmasked (benchmark baseline)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "masking": no_masks})

    def set_contribution(self, vector: np.ndarray, weight: int, schema_hash: bytes) -> None:
        super().set_contribution(vector, weight, plaintext_schema_hash(schema_hash))
