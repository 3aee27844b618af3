"""Freshness and replay checks for envelopes, with bounded memory.

A sender numbers its envelopes with one increasing counter (started from its clock, so it
keeps increasing across restarts). A receiver remembers, per (group, sender), the highest
sequence number seen and which of the last ``seq_window`` numbers it has seen; anything older
or already seen is a replay. An entry is forgotten once every message it could match is
stale anyway (no activity for twice the freshness window), so a forgotten entry never lets a
replay through.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gossiplearn.protocol.errors import ReplayedMessage, ReplayTableFull, StaleMessage

DEFAULT_FRESHNESS_MS = 30_000
DEFAULT_SEQ_WINDOW = 4096
DEFAULT_MAX_KEYS = 65_536


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
    _windows: dict[tuple[bytes, bytes], _Window] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self._windows)

    def check_fresh(self, ts_ms: int, now_ms: int) -> None:
        if not now_ms - self.freshness_ms <= ts_ms <= now_ms + self.freshness_ms:
            raise StaleMessage(f"timestamp {ts_ms} is {ts_ms - now_ms:+d} ms from now")

    def check_and_record(self, group: bytes, sender: bytes, seq: int, now_ms: int) -> None:
        """Record (group, sender, seq) or raise if it was seen or fell out of the window."""
        key = (group, sender)
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= self.max_keys:
                self.prune(now_ms)
                if len(self._windows) >= self.max_keys:
                    raise ReplayTableFull(f"{len(self._windows)} (group, sender) pairs tracked")
            self._windows[key] = _Window(seq, {seq}, now_ms)
            return
        if seq <= window.highest - self.seq_window or seq in window.seen:
            raise ReplayedMessage(f"seq {seq} already seen or too old")
        window.seen.add(seq)
        window.last_activity_ms = now_ms
        if seq > window.highest:
            window.highest = seq
            if len(window.seen) > 2 * self.seq_window:
                floor = seq - self.seq_window
                window.seen = {s for s in window.seen if s > floor}

    def prune(self, now_ms: int) -> None:
        """Forget pairs idle for twice the freshness window: their replays are stale anyway."""
        horizon = now_ms - 2 * self.freshness_ms
        for key in [k for k, w in self._windows.items() if w.last_activity_ms < horizon]:
            del self._windows[key]
