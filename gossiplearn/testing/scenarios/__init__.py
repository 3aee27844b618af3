"""The scenarios behind ``benchmarks/``: each benchmark is a thin script (its flags, one call
into a module here, one JSON line), and each scenario has its tests in ``tests/``, which run it
with small counts.

- :mod:`~gossiplearn.testing.scenarios.live`: real daemons in one trio process, watched (shared
  by the fuzz and hostile scenarios).
- :mod:`~gossiplearn.testing.scenarios.fuzz`: an admitted peer fuzzing a live daemon.
- :mod:`~gossiplearn.testing.scenarios.hostile`: strangers, forged signatures, plaintext,
  replays, garbage parts; :mod:`~gossiplearn.testing.scenarios.floods` (stream and handshake
  floods) and :mod:`~gossiplearn.testing.scenarios.skew` (a neighbour's skewed clock).
- :mod:`~gossiplearn.testing.scenarios.insider`: honest rounds per minute under one insider.
- :mod:`~gossiplearn.testing.scenarios.wan_rounds`: rounds timed across the network lab
  (benchmarks/wan_bench.py; tests/testing/test_wan_bench.py).
- :mod:`~gossiplearn.testing.scenarios.soak`, :mod:`~gossiplearn.testing.scenarios.churn`,
  :mod:`~gossiplearn.testing.scenarios.idle`: real daemon processes over time.
- :mod:`~gossiplearn.testing.scenarios.checkpoint_crash`: kill -9 during checkpoint saves.
- :mod:`~gossiplearn.testing.scenarios.rounds`: the round's cost (in memory, over libp2p),
  :mod:`~gossiplearn.testing.scenarios.crypto`: the hot paths' throughput.
- :mod:`~gossiplearn.testing.scenarios.learning`: accuracy against the baselines, and memory
  mode at scale; :mod:`~gossiplearn.testing.scenarios.privacy`: what DP costs and buys.
- :mod:`~gossiplearn.testing.scenarios.compare`: hivemind's all-reduce and Flower's simulation,
  run in their own interpreters.

Nothing in the daemon imports these (tests/test_layering.py).
"""
