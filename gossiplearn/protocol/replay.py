"""Freshness and replay checks for envelopes, with bounded memory.

A sender numbers its envelopes with one increasing counter (started from its clock, so it
keeps increasing across restarts). A receiver remembers, per (group, sender), the highest
sequence number seen and which of the last ``seq_window`` numbers it has seen; anything older
or already seen is a replay. An entry is forgotten once every message it could match is
stale anyway (no activity for twice the freshness window), so a forgotten entry never lets a
replay through.

Memory is bounded twice. Each sender may hold at most ``max_keys_per_sender`` pairs: a sender
that keeps opening fresh group ids is refused (:class:`ReplayTableFull`) once at its quota,
until its own pairs go idle, and nobody else is affected. That is safe because a replay can
only come from its original sender (the envelope's sender must be the authenticated peer that
delivered it, and the recipient must be us), so refusing a sender's new pairs hurts only that
sender. ``max_keys`` caps the whole table as well, against many senders at once. Pairs are
kept in order of last activity, so pruning costs only the pairs it forgets.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from gossiplearn.protocol.errors import ReplayedMessage, ReplayTableFull, StaleMessage

DEFAULT_FRESHNESS_MS = 30_000
DEFAULT_SEQ_WINDOW = 4096
DEFAULT_MAX_KEYS = 65_536
DEFAULT_MAX_KEYS_PER_SENDER = 1024


def sequence_start(now_ms: int) -> int:
    """A first sequence number above any a previous run of this peer can have used."""
    return now_ms * 1000


class SequenceCounter:
    """The sender side: strictly increasing sequence numbers."""

    def __init__(self, start: int) -> None:
        self._next = start

    def __call__(self) -> int:
        value = self._next
        self._next += 1
        return value


@dataclass
class _Window:
    highest: int
    seen: set[int]
    last_activity_ms: int


@dataclass
class ReplayGuard:
    """The receiver side: rejects stale and repeated (group, sender, seq) triples."""

    freshness_ms: int = DEFAULT_FRESHNESS_MS
    seq_window: int = DEFAULT_SEQ_WINDOW
    max_keys: int = DEFAULT_MAX_KEYS
    max_keys_per_sender: int = DEFAULT_MAX_KEYS_PER_SENDER
    # Least recently active first: every record moves its pair to the end.
    _windows: OrderedDict[tuple[bytes, bytes], _Window] = field(
        default_factory=OrderedDict, repr=False
    )
    # sender -> how many pairs it holds in _windows (no zero entries).
    _per_sender: Counter[bytes] = field(default_factory=Counter, repr=False)

    def __len__(self) -> int:
        return len(self._windows)

    def pairs_of(self, sender: bytes) -> int:
        """How many (group, sender) pairs ``sender`` holds."""
        return self._per_sender[sender]

    def check_fresh(self, ts_ms: int, now_ms: int) -> None:
        if not now_ms - self.freshness_ms <= ts_ms <= now_ms + self.freshness_ms:
            raise StaleMessage(f"timestamp {ts_ms} is {ts_ms - now_ms:+d} ms from now")

    def check_and_record(self, group: bytes, sender: bytes, seq: int, now_ms: int) -> None:
        """Record (group, sender, seq) or raise if it was seen or fell out of the window."""
        key = (group, sender)
        window = self._windows.get(key)
        if window is None:
            # Forget idle pairs as we go (cheap: only the oldest, idle ones are looked at), so
            # the table holds about two freshness windows of traffic, not a full quota.
            self.prune(now_ms)
            self._make_room(sender)
            self._windows[key] = _Window(seq, {seq}, now_ms)
            self._per_sender[sender] += 1
            return
        if seq <= window.highest - self.seq_window or seq in window.seen:
            raise ReplayedMessage(f"seq {seq} already seen or too old")
        window.seen.add(seq)
        window.last_activity_ms = now_ms
        self._windows.move_to_end(key)
        if seq > window.highest:
            window.highest = seq
            if len(window.seen) > 2 * self.seq_window:
                floor = seq - self.seq_window
                window.seen = {s for s in window.seen if s > floor}

    def _make_room(self, sender: bytes) -> None:
        """Raise unless ``sender`` may open one more pair (idle pairs are already pruned)."""
        held = self._per_sender[sender]
        if held >= self.max_keys_per_sender:
            raise ReplayTableFull(f"this sender already has {held} (group, sender) pairs tracked")
        if len(self._windows) >= self.max_keys:
            raise ReplayTableFull(f"{len(self._windows)} (group, sender) pairs tracked")

    def prune(self, now_ms: int) -> None:
        """Forget pairs idle for twice the freshness window: their replays are stale anyway."""
        horizon = now_ms - 2 * self.freshness_ms
        # Oldest activity first, so stop at the first pair still active. (If the caller's
        # clock stepped back, a few idle pairs may wait behind it: kept longer, never lost
        # early.)
        while self._windows:
            key, window = next(iter(self._windows.items()))
            if window.last_activity_ms >= horizon:
                break
            del self._windows[key]
            sender = key[1]
            self._per_sender[sender] -= 1
            if not self._per_sender[sender]:
                del self._per_sender[sender]
