"""gossiplearn's simulation against Flower's ``run_simulation`` on one workload, alternated.

Workload (issue 14): digits, Dirichlet(0.3), 10 peers, 50 rounds, 2 local epochs, batch 32,
SGD lr 0.05 momentum 0.9, MLP 64-128-64 backbone + linear head. Each launch runs, in this
order: Flower 1.x ``run_simulation`` (Ray backend, FedAvg, every client fits and evaluates
every round), ``gossiplearn sim --mode process`` (10 real daemons) and ``gossiplearn sim
--mode memory``, each as a fresh process timed from its start to its exit (imports and
start-up included, as a user waits for it). Both use gossiplearn's own digits split and
model factory (Flower's interpreter imports them from this checkout), so data and model are
the same. Prints one JSON line: flower_s, process_s, memory_s (medians over --launches),
process_over_flower and memory_over_flower (medians of per-launch ratios), accuracies.

Flower runs in its own interpreter (--flower-python, or $FLOWER_PYTHON, or this one if it
can import flwr); without one this prints a line saying it was skipped, and exits 0. Flower
is not a dependency of gossiplearn; set it up apart, e.g.
  python3 -m venv /tmp/flower-venv && /tmp/flower-venv/bin/pip install torch==2.13.0 \\
  && /tmp/flower-venv/bin/pip install "flwr[simulation]" scikit-learn

Usage: python benchmarks/compare_flower.py [--launches 1] [--peers 10] [--rounds 50]
       [--flower-python PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HIDDEN = "64,128,64"

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
    backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
)
"""


def find_flower(explicit: str | None) -> tuple[str | None, str]:
    for python in (c for c in (explicit, os.environ.get("FLOWER_PYTHON"), sys.executable) if c):
        try:
            found = subprocess.run(
                [python, "-c", "import flwr; print(flwr.__version__)"],
                capture_output=True,
                text=True,
                timeout=120,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if found.returncode == 0:
            return python, found.stdout.strip()
    return None, "no interpreter given with --flower-python or $FLOWER_PYTHON imports flwr"


def timed(command: list[str], env: dict[str, str] | None = None) -> float:
    began = time.perf_counter()
    subprocess.run(
        command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - began


def gossiplearn_sim(
    mode: str, peers: int, rounds: int, epochs: int, out: Path
) -> tuple[float, float]:
    """(wall seconds, mean final personal accuracy) of one ``gossiplearn sim`` run."""
    command = [sys.executable, "-m", "gossiplearn.cli", "sim", "--peers", str(peers)]
    command += ["--rounds", str(rounds), "--dataset", "digits", "--partition", "dirichlet:0.3"]
    command += ["--epochs", str(epochs), "--hidden", HIDDEN, "--mode", mode, "--no-baselines"]
    command += ["--out", str(out), "--overwrite"]
    seconds = timed(command)
    results = json.loads((out / "results.json").read_text())
    return seconds, results["methods"]["gossiplearn"]["summary"]["mean"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=1)
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--flower-python", help="an interpreter that can import flwr")
    args = parser.parse_args()
    python, version = find_flower(args.flower_python)
    if python is None:
        print(json.dumps({"bench": "compare_flower", "skipped": f"Flower absent: {version}"}))
        return
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_DEDUP_LOGS="0")
    flower, process, memory, accuracy = [], [], [], {}
    with tempfile.TemporaryDirectory(prefix="gossiplearn-flower-") as work:
        for launch in range(args.launches):
            flower_cmd = [python, "-c", FLOWER_APP, str(args.peers), str(args.rounds)]
            flower.append(timed(flower_cmd + [str(args.epochs), HIDDEN], env))
            out = Path(work) / f"process-{launch}"
            seconds, accuracy["process"] = gossiplearn_sim(
                "process", args.peers, args.rounds, args.epochs, out
            )
            process.append(seconds)
            out = Path(work) / f"memory-{launch}"
            seconds, accuracy["memory"] = gossiplearn_sim(
                "memory", args.peers, args.rounds, args.epochs, out
            )
            memory.append(seconds)
    print(
        json.dumps(
            {
                "bench": "compare_flower",
                "flower": version,
                "peers": args.peers,
                "rounds": args.rounds,
                "epochs": args.epochs,
                "launches": args.launches,
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
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
