"""The peer: the only layer with I/O, in two rooms and the operator's tools.

- :mod:`gossiplearn.peer.net`: the network side every peer runs, whoever trains its model
  (libp2p host and admission, discovery, the round engine, the bulk channel, the runtime).
- :mod:`gossiplearn.peer.learning`: the model and what trains it (SplitModel, data, trainer,
  personal acceptance, checkpoints, the daemon's built-in learning schedule).
- daemon.py: the daemon of ``gossiplearn run``, the runtime running the built-in learning.
- The operator's side: the config file (config.py), the status endpoint and metrics
  (status.py), one peer per directory (dirlock.py), kept equivocation proofs
  (evidence_store.py).
"""
