"""gossiplearn against other systems on one machine: hivemind's all-reduce and Flower's
simulation, each run in its own interpreter (neither is a dependency of gossiplearn).

- :func:`compare_hivemind`: per launch, hivemind (4 fresh processes, 1 + ``steps``
  all-reduce steps of a vector of n float32) then gossiplearn's secure round and its
  plaintext variant (:func:`~gossiplearn.testing.scenarios.rounds.libp2p_rounds`); medians
  and per-launch ratios. :func:`round_sizes` does the same once per backbone size, and
  :func:`plot_round_sizes` draws the curves.
- :func:`compare_flower`: per launch, Flower 1.x ``run_simulation`` (Ray backend, FedAvg) then
  ``gossiplearn sim --mode process`` and ``--mode memory`` on the same workload, each a fresh
  process timed from start to exit.

:func:`find_hivemind` / :func:`find_flower` look for an interpreter that imports them (the
given one, $HIVEMIND_PYTHON / $FLOWER_PYTHON, or this one); without one, a benchmark says it
was skipped. benchmarks/compare_hivemind.py, compare_flower.py and round_sizes.py print these;
tests/scenarios/test_compare.py runs the gossiplearn side and the skipping.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gossiplearn.testing.load import cpu_hogs, load_average
from gossiplearn.testing.scenarios.rounds import libp2p_rounds

#: The directory holding the gossiplearn package: Flower's interpreter imports it from there.
PACKAGE_ROOT = Path(__file__).resolve().parents[3]

# ---- hivemind ------------------------------------------------------------------------------

HIVEMIND_PEERS = 4

#: One hivemind peer. argv: index, n, steps, initial peer multiaddr (or "-"). Peer 0 prints
#: its multiaddrs first. Then, per step: prints "ready" once its group is assembled and it
#: waits on its trigger, reads "go", triggers, and prints {"t": seconds until its average}.
HIVEMIND_PEER = r"""
import json, sys, time
import torch
import hivemind
from hivemind.averaging.control import AveragingStage

index, n, steps, initial = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(1)
dht = hivemind.DHT(
    start=True,
    host_maddrs=["/ip4/127.0.0.1/tcp/0"],
    initial_peers=None if initial == "-" else [initial],
)
if index == 0:
    print(json.dumps([str(a) for a in dht.get_visible_maddrs()]), flush=True)
tensor = torch.randn(n, generator=torch.Generator().manual_seed(index))
averager = hivemind.averaging.DecentralizedAverager(
    [tensor],
    dht,
    prefix="bench",
    target_group_size=4,
    min_group_size=4,
    min_matchmaking_time=2.0,
    request_timeout=1.0,
    start=True,
)
for step in range(steps):
    control = averager.step(wait=False, require_trigger=True, timeout=300)
    while control.stage != AveragingStage.AWAITING_TRIGGER:
        if control.done():
            control.result()  # raises what failed
            raise RuntimeError("step ended before its group was assembled")
        time.sleep(0.005)
    print("ready", flush=True)
    assert sys.stdin.readline().strip() == "go"
    began = time.perf_counter()
    control.allow_allreduce()
    control.result()
    print(json.dumps({"t": time.perf_counter() - began}), flush=True)
averager.shutdown()
dht.shutdown()
"""


def find_interpreter(explicit: str | None, module: str, variable: str) -> tuple[str | None, str]:
    """(interpreter, version) for the first of ``explicit``, ``$variable`` and this interpreter
    that imports ``module``; (None, why not) when none does."""
    for python in (c for c in (explicit, os.environ.get(variable), sys.executable) if c):
        try:
            found = subprocess.run(
                [python, "-c", f"import {module}; print({module}.__version__)"],
                capture_output=True,
                text=True,
                timeout=120,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if found.returncode == 0:
            return python, found.stdout.strip()
    flag = "--" + module.replace("flwr", "flower") + "-python"
    return None, f"no interpreter given with {flag} or ${variable} imports {module}"


def find_hivemind(explicit: str | None) -> tuple[str | None, str]:
    """(interpreter, version or why not) for the interpreter that imports hivemind."""
    return find_interpreter(explicit, "hivemind", "HIVEMIND_PYTHON")


def hivemind_steps(python: str, n: int, steps: int) -> list[float]:
    """1 + ``steps`` all-reduce steps of 4 fresh peers; peer 0's times after the warm-up."""
    code = HIVEMIND_PEER
    first = subprocess.Popen(
        [python, "-c", code, "0", str(n), str(steps + 1), "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    peers = [first]
    try:
        assert first.stdout is not None
        maddrs = json.loads(first.stdout.readline())
        initial = next((a for a in maddrs if "127.0.0.1" in a), maddrs[0])
        for i in range(1, HIVEMIND_PEERS):
            peers.append(
                subprocess.Popen(
                    [python, "-c", code, str(i), str(n), str(steps + 1), initial],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
            )
        times = []
        for _ in range(steps + 1):
            for peer in peers:  # every group member waits on its trigger
                assert peer.stdout is not None
                line = peer.stdout.readline()
                if line.strip() != "ready":
                    raise RuntimeError(f"hivemind peer said {line!r}")
            for peer in peers:  # released together
                assert peer.stdin is not None
                peer.stdin.write("go\n")
                peer.stdin.flush()
            results = []
            for peer in peers:
                assert peer.stdout is not None
                results.append(json.loads(peer.stdout.readline())["t"])
            times.append(results[0])
        for peer in peers:
            peer.wait(timeout=60)
        return times[1:]
    finally:
        for peer in peers:
            if peer.poll() is None:
                peer.kill()


def compare_hivemind(
    python: str,
    version: str,
    n: int,
    launches: int,
    steps: int,
    rounds: int,
    plain: bool = True,
    ring: int = 32,
    load: int = 0,
) -> dict[str, Any]:
    """compare_hivemind's line for vectors of ``n``: ``launches`` launches, each hivemind then
    gossiplearn secure (in a ``ring``-bit ring) then (if ``plain``) plaintext, all beside
    ``load`` spinning processes (:func:`gossiplearn.testing.load.cpu_hogs`)."""
    hive, secure, plain_s, ratios, plain_ratios, loads = [], [], [], [], [], []
    began = time.perf_counter()
    with cpu_hogs(load):
        for _ in range(launches):
            h = statistics.median(hivemind_steps(python, n, steps))
            s = libp2p_rounds(n, rounds, "secure", ring=ring)["round_s"]
            hive.append(h)
            secure.append(s)
            ratios.append(s / h)
            if plain:
                p = libp2p_rounds(n, rounds, "plain")["round_s"]
                plain_s.append(p)
                plain_ratios.append(p / h)
            loads.append(load_average())
    line: dict[str, Any] = {
        "bench": "compare_hivemind",
        "n": n,
        "peers": HIVEMIND_PEERS,
        "ring": ring,
        "hivemind": version,
        "launches": launches,
        "hogs": load,
        "load_average": loads,
        "hivemind_step_s": round(statistics.median(hive), 3),
        "secure_round_s": round(statistics.median(secure), 3),
        "secure_over_hivemind": round(statistics.median(ratios), 3),
        "per_launch": [
            {"hivemind_s": round(h, 3), "secure_s": round(s, 3)}
            for h, s in zip(hive, secure, strict=True)
        ],
        "wall_s": round(time.perf_counter() - began, 1),
    }
    if plain_s:
        line["plain_round_s"] = round(statistics.median(plain_s), 3)
        line["plain_over_hivemind"] = round(statistics.median(plain_ratios), 3)
    return line


# ---- round time against backbone size ------------------------------------------------------


def round_sizes(
    n: int, rounds: int, steps: int, hivemind: str | None, rings: tuple[int, ...] = (32,)
) -> dict[str, Any]:
    """round_sizes' line for n: hivemind (if an interpreter has it), secure (in each of
    ``rings``: ``secure_s`` for 32 bits, ``secure16_s``... for narrow rings) and plain."""
    line: dict[str, Any] = {"bench": "round_sizes", "n": n, "model_mb": round(4 * n / 1e6, 1)}
    if hivemind is not None:
        line["hivemind_s"] = round(statistics.median(hivemind_steps(hivemind, n, steps)), 3)
    for ring in rings:
        key = "secure_s" if ring == 32 else f"secure{ring}_s"
        line[key] = round(libp2p_rounds(n, rounds, "secure", ring=ring)["round_s"], 3)
    line["plain_s"] = round(libp2p_rounds(n, rounds, "plain")["round_s"], 3)
    if hivemind is not None:
        for key in [k for k in line if k.startswith("secure") and k.endswith("_s")]:
            line[key[:-2] + "_over_hivemind"] = round(line[key] / line["hivemind_s"], 3)
    return line


def plot_round_sizes(lines: list[dict[str, Any]], path: Path) -> None:
    """The curves of round_sizes' lines (those present), log-log, into a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [int(line["n"]) for line in lines]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for key, label, style in (
        ("secure_s", "gossiplearn, secure round", "o-"),
        ("secure16_s", "gossiplearn, secure round, 16-bit ring", "d-"),
        ("plain_s", "gossiplearn, plaintext variant", "s--"),
        ("hivemind_s", "hivemind 1.1.12, plaintext all-reduce", "^-"),
    ):
        points = [(n, line[key]) for n, line in zip(sizes, lines, strict=True) if key in line]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], style, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("backbone size (float32 parameters)")
    ax.set_ylabel("round / all-reduce step time (s)")
    ax.set_title("4 processes on one 2-core machine, 127.0.0.1")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


# ---- Flower --------------------------------------------------------------------------------

#: The workload (issue 14): digits, Dirichlet(0.3), MLP 64-128-64 backbone + linear head.
FLOWER_HIDDEN = "64,128,64"

FLOWER_APP = r"""
import json, sys, time
import numpy as np
import torch
from torch.utils.data import DataLoader
from flwr.client import ClientApp, NumPyClient
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.simulation import run_simulation

from gossiplearn.peer.learning.architectures import mlp
from gossiplearn.sim.datasets import digits

PEERS, ROUNDS, EPOCHS = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
HIDDEN = tuple(int(x) for x in sys.argv[4].split(","))
RAY_DIR = sys.argv[5]
BATCH, LR, MOMENTUM = 32, 0.05, 0.9
accuracies = {}


def make_model():
    torch.manual_seed(0)
    return mlp(64, HIDDEN, 10)


def weights(model):
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


class Client(NumPyClient):
    def __init__(self, index):
        torch.set_num_threads(1)
        self.train, self.validation = digits(shard=f"{index}/{PEERS}", partition="dirichlet:0.3")
        self.model = make_model()

    def _set(self, parameters):
        keys = list(self.model.state_dict())
        self.model.load_state_dict({k: torch.from_numpy(v) for k, v in zip(keys, parameters)})

    def fit(self, parameters, config):
        self._set(parameters)
        optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        loader = DataLoader(self.train, batch_size=BATCH, shuffle=True)
        self.model.train()
        for _ in range(EPOCHS):
            for x, y in loader:
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(self.model(x), y).backward()
                optimizer.step()
        return weights(self.model), len(self.train), {}

    def evaluate(self, parameters, config):
        self._set(parameters)
        self.model.eval()
        x, y = self.validation.tensors
        with torch.no_grad():
            logits = self.model(x)
        loss = float(torch.nn.functional.cross_entropy(logits, y))
        return loss, len(y), {"accuracy": float((logits.argmax(1) == y).float().mean())}


def client_fn(context: Context):
    return Client(int(context.node_config["partition-id"])).to_client()


def server_fn(context: Context):
    def aggregate_evaluate(metrics):
        total = sum(n for n, _ in metrics)
        return {"accuracy": sum(n * m["accuracy"] for n, m in metrics) / total}

    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=1.0,
        min_fit_clients=PEERS,
        min_evaluate_clients=PEERS,
        min_available_clients=PEERS,
        initial_parameters=ndarrays_to_parameters(weights(make_model())),
        evaluate_metrics_aggregation_fn=aggregate_evaluate,
    )
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=ROUNDS))


run_simulation(
    server_app=ServerApp(server_fn=server_fn),
    client_app=ClientApp(client_fn=client_fn),
    num_supernodes=PEERS,
    backend_config={
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        # A Ray instance of its own, never a cluster found on the machine (compare.py says why).
        "init_args": {"address": "local", "_temp_dir": RAY_DIR, "include_dashboard": False},
    },
)
"""


def find_flower(explicit: str | None) -> tuple[str | None, str]:
    """(interpreter, version or why not) for the interpreter that imports flwr."""
    return find_interpreter(explicit, "flwr", "FLOWER_PYTHON")


# Flower gets a Ray instance of its own. Its backend calls ``ray.init()`` without an address,
# and Ray then joins the cluster named by $RAY_ADDRESS or by /tmp/ray/ray_current_cluster, which
# ``ray start`` and ``ray.cluster_utils.Cluster`` write (tests/sim/test_ray.py does, while the
# suite runs beside a benchmark) and which stays behind when that cluster is killed: Flower
# then waited on a cluster that was busy or gone, retrying its GCS (7 CPU-s in 16 minutes).
# So the app asks for ``address="local"`` in a temporary directory of its own (kept, with
# Ray's logs, when the run fails), $RAY_ADDRESS is dropped, and a run is stopped after
# flower_budget_s.


def flower_budget_s(rounds: int) -> float:
    """How long one Flower run may take before it is stopped: start-up plus 20 s a round."""
    return 300 + 20 * rounds


def timed(
    command: list[str], env: dict[str, str] | None = None, timeout_s: float | None = None
) -> float:
    """Wall seconds of ``command``; a failure or a timeout raises one line naming the command
    and the last line it wrote to stderr."""
    began = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        try:
            subprocess.run(
                command,
                check=True,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
                timeout=timeout_s,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            err.seek(0)
            lines = [line for line in err.read().decode(errors="replace").splitlines() if line]
            last = lines[-1].strip() if lines else "nothing on stderr"
            what = (
                f"did not finish within {timeout_s:.0f} s"
                if isinstance(exc, subprocess.TimeoutExpired)
                else f"exited with code {exc.returncode}"
            )
            raise RuntimeError(f"{Path(command[0]).name} ... {what}; last: {last}") from exc
    return time.perf_counter() - began


def gossiplearn_sim(
    mode: str, peers: int, rounds: int, epochs: int, out: Path
) -> tuple[float, float]:
    """(wall seconds, mean final personal accuracy) of one ``gossiplearn sim`` run."""
    command = [sys.executable, "-m", "gossiplearn.cli", "sim", "--peers", str(peers)]
    command += ["--rounds", str(rounds), "--dataset", "digits", "--partition", "dirichlet:0.3"]
    command += [
        "--epochs",
        str(epochs),
        "--hidden",
        FLOWER_HIDDEN,
        "--mode",
        mode,
        "--no-baselines",
    ]
    command += ["--out", str(out), "--overwrite"]
    seconds = timed(command)
    results = json.loads((out / "results.json").read_text())
    return seconds, results["methods"]["gossiplearn"]["summary"]["mean"]


def compare_flower(
    python: str, version: str, launches: int, peers: int, rounds: int, epochs: int
) -> dict[str, Any]:
    """compare_flower's line: ``launches`` launches of Flower, then gossiplearn process mode,
    then memory mode, on the same workload."""
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_ROOT), RAY_DEDUP_LOGS="0")
    env.pop("RAY_ADDRESS", None)  # a Ray instance of its own: see flower_budget_s
    flower, process, memory, accuracy = [], [], [], {}
    with tempfile.TemporaryDirectory(prefix="gossiplearn-flower-") as work:
        for launch in range(launches):
            # Short: Ray's socket paths under it must fit in 107 bytes.
            ray_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
            flower_cmd = [python, "-c", FLOWER_APP, str(peers), str(rounds), str(epochs)]
            flower_cmd += [FLOWER_HIDDEN, ray_dir]
            try:
                flower.append(timed(flower_cmd, env, flower_budget_s(rounds)))
            except RuntimeError as exc:
                raise RuntimeError(f"Flower: {exc} (Ray's logs: {ray_dir})") from exc
            shutil.rmtree(ray_dir, ignore_errors=True)
            out = Path(work) / f"process-{launch}"
            seconds, accuracy["process"] = gossiplearn_sim("process", peers, rounds, epochs, out)
            process.append(seconds)
            out = Path(work) / f"memory-{launch}"
            seconds, accuracy["memory"] = gossiplearn_sim("memory", peers, rounds, epochs, out)
            memory.append(seconds)
    return {
        "bench": "compare_flower",
        "flower": version,
        "peers": peers,
        "rounds": rounds,
        "epochs": epochs,
        "launches": launches,
        "flower_s": round(statistics.median(flower), 1),
        "process_s": round(statistics.median(process), 1),
        "memory_s": round(statistics.median(memory), 1),
        "process_over_flower": round(
            statistics.median(p / f for p, f in zip(process, flower, strict=True)), 3
        ),
        "memory_over_flower": round(
            statistics.median(m / f for m, f in zip(memory, flower, strict=True)), 3
        ),
        "gossiplearn_accuracy": {k: round(v, 4) for k, v in accuracy.items()},
    }
