"""The peer daemon: the only layer with I/O (libp2p host, scheduler, trainer, checkpoints)."""
