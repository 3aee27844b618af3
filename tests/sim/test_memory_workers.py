"""Memory mode in worker processes (from PARALLEL_FROM peers): each peer learns in one
worker while the groups' rounds run in the main process (round machines never move), and
the results are exactly those of one process."""

import pytest

from gossiplearn.sim.config import SimConfig, load_data
from gossiplearn.sim.memory import run_memory


def synthetic_config(peers: int, **overrides: object) -> SimConfig:
    """Memory mode, 3 rounds of groups of up to 4 on Synthetic(1, 1) data, a small MLP."""
    return SimConfig(
        peers=peers,
        rounds=3,
        dataset="synthetic",
        partition="synthetic:1,1",
        mode="memory",
        hidden=(16,),
        group_size=4,
        **overrides,  # type: ignore[arg-type]
    ).validate()


@pytest.mark.timeout(300)
def test_workers_give_the_results_of_one_process():
    config = synthetic_config(peers=23)
    shards = load_data(config)
    alone = run_memory(config, shards, processes=1)
    reported = []
    split = run_memory(config, shards, lambda *f: reported.append(f), processes=3)
    assert split.accuracy_per_round == alone.accuracy_per_round
    assert split.extra == alone.extra and split.bytes_per_peer == alone.bytes_per_peer
    assert alone.extra["rounds_aborted"] == 0 and len(alone.final) == 23
    assert [r[0] for r in reported] == [1, 2, 3]


@pytest.mark.timeout(300)
def test_workers_with_a_peer_sitting_rounds_out_give_the_results_of_one_process():
    # 5 peers in groups of 3..4: one sits each round out (and is evaluated and trained all
    # the same); evaluated every other round and after the last
    config = synthetic_config(peers=5, eval_every=2)
    shards = load_data(config)
    alone = run_memory(config, shards, processes=1)
    split = run_memory(config, shards, processes=2)
    assert str(split.accuracy_per_round) == str(alone.accuracy_per_round)  # NaN rows too
    assert split.extra == alone.extra and split.bytes_per_peer == alone.bytes_per_peer
    assert split.steps_per_round == alone.steps_per_round
