"""The round's settings: what every member of a network must share (frac_bits, max_weight)
and what each peer may choose for itself (group size, timings, backoff).

Everything that configures a :class:`~gossiplearn.protocol.node.Node` is here, with the
reason for each default; the daemon and memory mode both build one from a peer's config
(``round.*`` keys, see docs/config.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gossiplearn.crypto.ring import DEFAULT_FRAC_BITS, RING32
from gossiplearn.protocol.messages import (
    CLIP_EXPONENT_OFFSET,
    MAX_GROUP,
    MAX_WEIGHT,
    MIN_GROUP,
    RING_BITS,
)
from gossiplearn.protocol.safeguards import Safeguards
from gossiplearn.protocol.shards import MAX_SHARD_BYTES


@dataclass(frozen=True)
class RoundConfig:
    """Round parameters every member of a network must share (frac_bits, max_weight) or may
    choose for itself."""

    #: k: the initiator invites up to k-1 neighbours. Groups are 3..k; 2 is impossible.
    max_group_size: int = 4
    frac_bits: int = DEFAULT_FRAC_BITS
    #: The ring of the secure sum: 32 bits (4 bytes an element, round(x 2^frac_bits)), or 16 or
    #: 8 (2 or 1 bytes: stochastic rounding at a scale that makes the group's sum impossible
    #: to wrap, values clipped to +-``clip``; see crypto/narrow.py). Network-wide.
    ring_bits: int = 32
    #: A narrow ring's clip, a power of two: every value beyond +-clip is clipped (counted).
    #: Network-wide. Unused by the 32-bit ring, whose range is +-2^(31 - frac_bits).
    clip: float = 8.0
    #: Network-wide cap on a member's weight. 1: equal weights. Above 1, weighting by sample
    #: count is opted in, each weight capped here (a member's influence is at most its cap
    #: over the total).
    max_weight: int = 1
    #: How long an initiator waits for ACCEPT/BUSY before closing the roster.
    invite_timeout_ms: int = 2_000
    #: The longest a round may take, from INVITE to the average; a round's own deadline is
    #: scaled to the backbone (invite timeout + round_slack_ms + 4x the transfer time at the
    #: measured throughput) and only capped here.
    round_timeout_ms: int = 60_000
    round_slack_ms: int = 3_000
    #: Throughput assumed before this node has finished a round.
    assumed_bytes_per_s: int = 10_000_000
    shard_bytes: int = MAX_SHARD_BYTES
    #: A decoded average with any element beyond +-this (or not finite) aborts the round as
    #: "implausible_average". Garbage sent by a member decodes roughly uniformly over the
    #: ring's range (+-2^(31 - frac_bits), +-2048 at f=20), so a part of even a few elements
    #: exceeds 64 almost surely, while real model weights are far smaller. Must be below that
    #: range, or the check could never fire.
    max_abs_average: float = 64.0
    #: How long a member whose round failed for a reason nobody can prove (a deadline passed,
    #: an ABORT) collects the others' reports before it ends the round: every member enters
    #: this within one latency of the first ABORT and reports at once, so 1 s covers round
    #: trips up to ~300 ms with room to spare.
    closing_grace_ms: int = 1_000
    #: A member's first backoff lasts this long, doubling with each further strike.
    backoff_base_ms: int = 15_000
    backoff_max_ms: int = 3_600_000
    #: Ended group ids remembered; an INVITE that reuses one is refused ("ended_group"). Past
    #: this, an id can come back: harmless, since every statement names its round's
    #: transcript, not just the group id (tests make it small to let an insider reuse ids).
    remembered_groups: int = 1024
    safeguards: Safeguards = field(default_factory=Safeguards)

    def __post_init__(self) -> None:
        if not MIN_GROUP <= self.max_group_size <= MAX_GROUP:
            raise ValueError(f"max_group_size must be in [{MIN_GROUP}, {MAX_GROUP}]")
        if not 1 <= self.max_weight <= MAX_WEIGHT:
            raise ValueError(f"max_weight must be in [1, {MAX_WEIGHT}]")
        if not 0 < self.invite_timeout_ms < self.round_timeout_ms:
            raise ValueError("need 0 < invite_timeout_ms < round_timeout_ms")
        if self.round_slack_ms < 0 or self.assumed_bytes_per_s <= 0:
            raise ValueError("need round_slack_ms >= 0 and assumed_bytes_per_s > 0")
        if not 0 < self.shard_bytes <= MAX_SHARD_BYTES:
            raise ValueError(f"shard_bytes must be in (0, {MAX_SHARD_BYTES}]")
        if self.ring_bits not in RING_BITS:
            raise ValueError(f"ring_bits must be one of {', '.join(map(str, RING_BITS))}")
        exponent = math.log2(self.clip) if self.clip > 0 else math.nan
        if not (exponent.is_integer() and -CLIP_EXPONENT_OFFSET <= exponent <= 16):
            raise ValueError("clip must be a power of two in [2^-16, 2^16]")
        ring_range = (RING32.max_int + 1) / 2.0**self.frac_bits
        if not 0 < self.max_abs_average < ring_range:
            raise ValueError(
                f"max_abs_average must be in (0, {ring_range:g}), the ring's range at "
                f"frac_bits={self.frac_bits}"
            )

    @property
    def clip_exponent(self) -> int:
        """The clip as carried in INVITE and ROSTER: log2(clip) + 16."""
        return int(math.log2(self.clip)) + CLIP_EXPONENT_OFFSET

    @property
    def ring_bytes(self) -> int:
        """Bytes of one element of the secure sum on the wire."""
        return self.ring_bits // 8
