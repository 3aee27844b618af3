"""Local multi-peer simulation: datasets, partitions, baselines, launcher and reports."""
