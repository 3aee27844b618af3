"""The learning side of a peer: the model and what trains it.

:class:`~gossiplearn.peer.learning.split_model.SplitModel` (a torch module split into the
shared backbone and the personal head; ready-made modules in architectures.py), the data
adapters (data.py), the trainer (trainer.py), personal acceptance of averages (learner.py),
checkpoints (checkpoint.py), lean.py (no torch._dynamo), and the daemon's built-in learning
schedule (builtin.py), which plugs into the network side as its ``Learning``.
"""
