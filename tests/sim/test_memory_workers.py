"""Memory mode in worker processes (from PARALLEL_FROM peers): each peer learns in one
worker, each group's round runs in one worker (round machines move between workers, pickled),
and the results are exactly those of one process."""

import pytest

from gossiplearn.sim.config import SimConfig, load_data
from gossiplearn.sim.memory import run_memory


@pytest.mark.timeout(300)
def test_workers_give_the_results_of_one_process():
    config = SimConfig(
        peers=23,
        rounds=3,
        dataset="synthetic",
        partition="synthetic:1,1",
        mode="memory",
        hidden=(16,),
        group_size=4,
    ).validate()
    shards = load_data(config)
    alone = run_memory(config, shards, processes=1)
    reported = []
    split = run_memory(config, shards, lambda *f: reported.append(f), processes=3)
    assert split.accuracy_per_round == alone.accuracy_per_round
    assert split.extra == alone.extra and split.bytes_per_peer == alone.bytes_per_peer
    assert alone.extra["rounds_aborted"] == 0 and len(alone.final) == 23
    assert [r[0] for r in reported] == [1, 2, 3]
