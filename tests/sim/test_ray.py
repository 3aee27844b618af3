"""`gossiplearn sim --mode process --ray ADDRESS` on a Ray cluster of two nodes simulated on
this machine (ray.cluster_utils.Cluster, as Ray's own tests do): real daemons placed on both
nodes complete their rounds, results.json has process mode's shape, and SIGTERM stops every
daemon and every actor."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gossiplearn.cli import app
from gossiplearn.sim.report import validate_results

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="the ray extra is absent: pip install 'gossiplearn[ray]'",
)


def test_without_ray_nothing_imports_it():
    code = (
        "import sys, gossiplearn.cli, gossiplearn.commands.sim, gossiplearn.sim.experiment; "
        "print('ray' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_ray_without_the_extra_says_which_to_install(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    args = ["sim", "--ray", "auto", "--no-baselines", "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "pip install 'gossiplearn[ray]'" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_ray_runs_process_or_memory_mode():
    result = CliRunner().invoke(app, ["sim", "--mode", "inproc", "--ray", "auto"])
    assert result.exit_code == 2 and "--mode process" in result.output


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    # Ray's default node IP throughout (the driver resolves 127.0.0.1 to it anyway). Three
    # CPUs a node: six peers of one CPU each need both nodes.
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
    nodes.add_node(num_cpus=3)
    nodes.wait_for_nodes()
    yield nodes
    nodes.shutdown()


def sim(out: Path, address: str, rounds: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "gossiplearn.cli", "sim", "--peers", "6", "--rounds"]
    command += [str(rounds), "--group-size", "3", "--hidden", "16", "--no-baselines"]
    command += ["--ray", address, "--peer-cpus", "1", "--out", str(out)]
    log = open(out.parent / f"{out.name}.log", "wb")  # noqa: SIM115 (the child keeps it)
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def daemons_running(directories: list[str]) -> list[int]:
    """Pids of `gossiplearn run DIR` processes for any of ``directories``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"run" in argv and any(d.encode() in argv for d in directories):
            found.append(int(entry.name))
    return found


def live_actors(cluster) -> list[str]:
    table = cluster.global_state.actor_table(None)
    return [a["ActorID"] for a in table.values() if a["State"] != "DEAD"]


def wait_until_no_actor_lives(cluster) -> None:
    deadline = time.monotonic() + 60
    while live_actors(cluster):  # ray.kill is asynchronous
        assert time.monotonic() < deadline, "actors left alive"
        time.sleep(0.2)


@needs_ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_six_daemons_on_two_nodes_complete_their_rounds(cluster, tmp_path):
    out = tmp_path / "run"
    process = sim(out, cluster.address, rounds=3)
    assert process.wait(timeout=450) == 0, (tmp_path / "run.log").read_text()[-3000:]
    document = json.loads((out / "results.json").read_text())
    validate_results(document)  # process mode's shape
    assert document["config"]["mode"] == "process" and document["config"]["ray"]
    gossiplearn = document["methods"]["gossiplearn"]
    assert gossiplearn["extra"]["peers_short_of_rounds"] == 0
    assert gossiplearn["extra"]["peers_lost"] == 0
    assert len(gossiplearn["final"]) == 6
    assert sorted(p.name for p in (out / "peers").iterdir()) == [f"peer-{i}" for i in range(6)]
    placements = [
        json.loads((out / "peers" / f"peer-{i}" / "placement.json").read_text()) for i in range(6)
    ]
    assert len({p["node"] for p in placements}) == 2  # both nodes ran daemons
    assert all((out / "peers" / f"peer-{i}" / "stdout.log").stat().st_size for i in range(6))
    assert not daemons_running([p["directory"] for p in placements])


@needs_ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigterm_stops_every_daemon_and_actor(cluster, tmp_path):
    out = tmp_path / "run"
    process = sim(out, cluster.address, rounds=1000)
    placement_files = [out / "peers" / f"peer-{i}" / "placement.json" for i in range(6)]
    deadline = time.monotonic() + 200
    while not all(p.exists() for p in placement_files):  # every daemon started
        assert process.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the daemons were not all started"
        time.sleep(0.5)
    directories = [json.loads(p.read_text())["directory"] for p in placement_files]
    deadline = time.monotonic() + 60
    while len(daemons_running(directories)) < 6:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert live_actors(cluster)
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(timeout=120) == 143  # SIGTERM_EXIT
    assert not daemons_running(directories)
    wait_until_no_actor_lives(cluster)


@needs_ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_memory_mode_over_actors_on_both_nodes_gives_the_local_results(cluster):
    import ray

    from gossiplearn.sim.config import load_data
    from gossiplearn.sim.memory import run_memory
    from tests.sim.test_memory_workers import synthetic_config

    config = synthetic_config(peers=30)
    shards = load_data(config)
    here = run_memory(config, shards, processes=1)
    spread = run_memory(config, shards, ray=cluster.address)  # 6 actors: 6 CPUs, 2 nodes
    assert spread.accuracy_per_round == here.accuracy_per_round
    assert spread.extra == here.extra and spread.bytes_per_peer == here.bytes_per_peer
    assert not ray.is_initialized()  # it disconnected
    wait_until_no_actor_lives(cluster)


@needs_ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_node_that_dies_is_peers_that_churn(cluster, tmp_path):
    # Last in this module: it takes the second node away.
    out = tmp_path / "run"
    process = sim(out, cluster.address, rounds=4)
    placement_files = [out / "peers" / f"peer-{i}" / "placement.json" for i in range(6)]
    deadline = time.monotonic() + 200
    while not all(p.exists() for p in placement_files):
        assert process.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the daemons were not all started"
        time.sleep(0.5)
    placements = [json.loads(p.read_text()) for p in placement_files]
    (worker,) = cluster.worker_nodes
    on_worker = [i for i, p in enumerate(placements) if p["node"] == worker.node_id]
    assert on_worker and len(on_worker) < 6
    cluster.remove_node(worker, allow_graceful=False)
    assert process.wait(timeout=450) == 0, (tmp_path / "run.log").read_text()[-3000:]
    document = json.loads((out / "results.json").read_text())
    validate_results(document)
    extra = document["methods"]["gossiplearn"]["extra"]
    assert extra["peers_lost"] == len(on_worker)
    assert not daemons_running([p["directory"] for p in placements])
