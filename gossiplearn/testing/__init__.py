"""Fixtures and adversaries shared by gossiplearn's tests and benchmarks (like ``trio.testing``).

- :mod:`gossiplearn.testing.swarm`: round machines on the in-memory network, fault injection,
  the round invariant.
- :mod:`gossiplearn.testing.insider`: admitted members that deviate from the protocol (the
  attacks round v2 defends against), usable in memory and in a live daemon.

Nothing in the daemon imports this package.
"""
