"""Counting the optimizer steps a method takes, whatever the trainer: every ``step()`` of any
torch optimizer in this process (torch's global step hook), so a user's trainer (Adam, its own
loop) is counted as the built-in one is. The table and results.json report them per peer and
round (``steps_per_round``): what each method spent, so unequal budgets show."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class StepCounter:
    """While :meth:`counting`: every optimizer step in this process, in any thread."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def _hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        # DP-SGD (Opacus) wraps an SGD in a DPOptimizer: count the step once, the inner one.
        if hasattr(optimizer, "original_optimizer"):
            return
        with self._lock:
            self.count += 1

    @contextmanager
    def counting(self) -> Iterator[StepCounter]:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        handle = register_optimizer_step_post_hook(self._hook)
        try:
            yield self
        finally:
            handle.remove()


class PhaseSteps:
    """Steps by phase: ``train`` (a round's local budget) and ``head`` (fine-tuning the head
    after an average), counted around the calls (:meth:`phase`)."""

    def __init__(self) -> None:
        self.counter = StepCounter()
        self.train = 0
        self.head = 0

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        before = self.counter.count
        try:
            with self.counter.counting():
                yield
        finally:
            setattr(self, name, getattr(self, name) + self.counter.count - before)

    def per_peer_round(self, peers: int, rounds: int) -> dict[str, float | None]:
        """{"train", "head", "total"}: the mean steps per peer per round so far."""
        runs = max(peers * rounds, 1)
        return {
            "train": self.train / runs,
            "head": self.head / runs,
            "total": (self.train + self.head) / runs,
        }
