"""Fixtures and adversaries shared by gossiplearn's tests and benchmarks (like ``trio.testing``).

- :mod:`gossiplearn.testing.swarm`: round machines on the in-memory network, fault injection,
  the round invariant.
- :mod:`gossiplearn.testing.insider`: admitted members that deviate from the protocol (the
  attacks round v3 defends against), usable in memory and in a live daemon.
- :mod:`gossiplearn.testing.cluster`: real daemons in one trio process, for live tests.
- :mod:`gossiplearn.testing.load`: spinning processes, a busy machine for benchmarks' ``--load``.
- :mod:`gossiplearn.testing.scenarios`: what each benchmark in ``benchmarks/`` measures (fuzzing,
  hostile peers, insiders, soak, churn, checkpoint crashes, round costs, learning, privacy...),
  run by the benchmark scripts with their counts and by the tests with small ones.

Nothing in the daemon imports this package.
"""
