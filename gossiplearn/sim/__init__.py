"""Local multi-peer simulation: datasets and partitions, the settings every method shares
(config.py), gossiplearn in memory mode (memory.py) or as real daemons (daemons.py), the
baselines, and reports."""
