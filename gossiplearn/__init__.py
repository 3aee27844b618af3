"""gossiplearn: decentralized gossip learning with secure group averaging.

Layers, dependencies pointing one way: ``crypto`` <- ``protocol`` <- ``peer`` <- ``sim``, ``cli``.
``crypto`` and ``protocol`` are pure (no trio, libp2p or torch) so importing them stays cheap.
"""

__version__ = "0.1.0"
