"""The network side of a peer, whoever trains its model: the libp2p host and its admission
(host.py, framing.py), discovery and the neighbour table (discovery.py, neighbours.py), the
round engine driving the protocol machine over streams (engine.py) and the bulk channel for
model parts (bulk.py), tied together by :class:`~gossiplearn.peer.net.runtime.PeerRuntime`.

Nothing here imports :mod:`gossiplearn.peer.learning`: the runtime talks to the side that owns
the model through the ``Learning`` protocol (runtime.py).
"""
