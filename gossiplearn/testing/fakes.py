"""Stand-ins for the round machine, for tests of what drives it (the engine) without a round.

:class:`IdleMachine` has every attribute the engine reads of a
:class:`~gossiplearn.protocol.node.Node` and takes no input; subclasses override what a test
needs (``receive``, ``peer_unreachable``, ...).
"""

from __future__ import annotations

from typing import Any


class NoBackoff:
    def snapshot(self, now_ms: int) -> dict[bytes, dict[str, object]]:
        return {}


class IdleMachine:
    """Not in a group, no deadline, nobody backed off; every input is ignored."""

    current_group: bytes | None = None
    contribution_fresh = True
    public_key = b"\x00" * 32

    def __init__(self) -> None:
        self.backoff = NoBackoff()
        self.channel_keys: dict[bytes, bytes] = {}

    @property
    def busy(self) -> bool:
        return self.current_group is not None

    @property
    def current_round(self) -> tuple[bytes, int, int] | None:
        return None if self.current_group is None else (self.current_group, 0, 0)

    def next_deadline(self) -> int | None:
        return None

    def tick(self, now_ms: int) -> list[Any]:
        return []

    def receive(self, frame: bytes, now_ms: int, *, from_peer: bytes | None = None) -> list[Any]:
        return []

    def peer_unreachable(self, peer: bytes, group: bytes, now_ms: int) -> list[Any]:
        return []
