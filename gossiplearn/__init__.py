"""gossiplearn: decentralized gossip learning with secure group averaging.

What a user needs, from here (imported on first use, so ``import gossiplearn`` stays cheap):

- :class:`Peer` (and :func:`open_peer` for trio): gossip learning inside your own training
  loop, ``with gossiplearn.Peer(DIR) as peer: ... peer.sync(model)``; :class:`SyncResult`.
- :class:`SplitModel`: how a torch module is split into the shared backbone and the personal
  head.
- :class:`TrainerProtocol`, :class:`TrainConfig`, :class:`Trainer` (the built-in one): what
  ``training.trainer = "module:Class"`` plugs into ``gossiplearn run`` and ``gossiplearn sim``.
- :class:`PeerData`: a peer's (train, validation, test) data; :class:`PeerConfig` and
  :func:`load_config`: a peer directory's configuration.
- :class:`PrivacyConfig`: the DP-SGD settings (``[privacy]``, ``TrainConfig.privacy``);
  ``gossiplearn.privacy.make_private`` makes a user trainer private.

Layers, dependencies pointing one way (tests/test_layering.py holds the table): ``crypto`` <-
``protocol`` <- ``peer`` (``peer.net`` and ``peer.learning``, joined by ``peer.daemon``) <-
``privacy.audit`` <- ``sim`` <- ``commands`` <- ``cli``; ``privacy.dp`` <- ``peer``; ``peer``
<- ``api`` <- this package's names. ``crypto`` and ``protocol`` are pure (no trio, libp2p or
torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gossiplearn.version import __version__

#: Public name -> the module it lives in.
_EXPORTS = {
    "Peer": "gossiplearn.api",
    "AsyncPeer": "gossiplearn.api",
    "open_peer": "gossiplearn.api",
    "SyncResult": "gossiplearn.api",
    "SplitModel": "gossiplearn.peer.learning.split_model",
    "TrainerProtocol": "gossiplearn.peer.learning.trainer",
    "TrainConfig": "gossiplearn.peer.learning.trainer",
    "Trainer": "gossiplearn.peer.learning.trainer",
    "PeerData": "gossiplearn.peer.learning.data",
    "PeerConfig": "gossiplearn.peer.config",
    "load_config": "gossiplearn.peer.config",
    "PrivacyConfig": "gossiplearn.privacy.dp",
}

__all__ = [
    "AsyncPeer",
    "Peer",
    "PeerConfig",
    "PeerData",
    "PrivacyConfig",
    "SplitModel",
    "SyncResult",
    "TrainConfig",
    "Trainer",
    "TrainerProtocol",
    "__version__",
    "load_config",
    "open_peer",
]

if TYPE_CHECKING:
    from gossiplearn.api import AsyncPeer, Peer, SyncResult, open_peer
    from gossiplearn.peer.config import PeerConfig, load_config
    from gossiplearn.peer.learning.data import PeerData
    from gossiplearn.peer.learning.split_model import SplitModel
    from gossiplearn.peer.learning.trainer import TrainConfig, Trainer, TrainerProtocol
    from gossiplearn.privacy.dp import PrivacyConfig


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gossiplearn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
