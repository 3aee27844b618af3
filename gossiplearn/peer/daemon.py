"""The peer daemon of ``gossiplearn run``: where the two rooms of the peer meet, the network side
(:class:`~gossiplearn.peer.net.runtime.PeerRuntime`) running the built-in learning
(:class:`~gossiplearn.peer.learning.builtin.BuiltinLearning`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gossiplearn.peer.config import PeerConfig
from gossiplearn.peer.learning.builtin import BuiltinLearning
from gossiplearn.peer.learning.learner import Learner
from gossiplearn.peer.net.runtime import (  # noqa: F401 - StartError is part of this module's API
    PeerRuntime,
    StartError,
)
from gossiplearn.protocol.node import Node


class Daemon(PeerRuntime):
    """The peer daemon of ``gossiplearn run DIR``: the runtime plus the built-in learning."""

    def __init__(
        self,
        directory: Path,
        config: PeerConfig | None = None,
        *,
        node_factory: Callable[..., Node] = Node,
    ) -> None:
        super().__init__(directory, config, learning=BuiltinLearning(), node_factory=node_factory)

    @property
    def model(self) -> Any:
        return self.builtin.model

    @property
    def learner(self) -> Learner | None:
        return self.builtin.learner

    @property
    def accuracy(self) -> float | None:
        return self.builtin.accuracy

    @property
    def digests(self) -> dict[str, str]:
        return self.builtin.digests

    @property
    def resumed_from(self) -> dict[str, Any] | None:
        return self.builtin.resumed_from

    @property
    def builtin(self) -> BuiltinLearning:
        learning = self.learning
        assert isinstance(learning, BuiltinLearning)
        return learning
