"""Your own model in the daemon: a small CNN on the built-in digits, through the CLI.

``model()`` is a model factory for ``model.factory``: a torch module with a ``backbone`` (two
convolutions, shared with the other organizations) and a ``head`` (a linear classifier, kept
by each organization). The built-in digits loader gives each sample as 64 pixel values; the
model reshapes them to one 8 x 8 channel.

Run as a script, it walks through what three organizations' operators would type, on this
machine (127.0.0.1), in DIR (kept), or in a temporary directory removed at the end:

    gossiplearn init org-I --model digits_cnn:model --dataset digits --shard I/3   (x 3)
    gossiplearn allow org-I ADDRESS-OF-J                                           (each pair)
    gossiplearn run org-I                                                          (x 3)
    gossiplearn status org-I --json                                                (until done)

then stops the daemons (SIGTERM) and prints one JSON line: each peer's rounds and accuracy.

    PYTHONPATH=examples python examples/digits_cnn.py [DIR] [--rounds 3]

``PYTHONPATH=examples`` makes ``digits_cnn`` importable by the daemons (a module named
``examples.digits_cnn`` would not do: py-libp2p installs a top-level package ``examples``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

PEERS = 3
SIDE = 8  # digits are 8 x 8 pixels


class Backbone(nn.Module):
    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8 x 8 -> 4 x 4
            nn.Flatten(),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.features(pixels.reshape(-1, 1, SIDE, SIDE))


class DigitsCNN(nn.Module):
    def __init__(self, channels: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.backbone = Backbone(channels)
        self.head = nn.Linear(2 * channels * (SIDE // 2) ** 2, classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(pixels))


def model(channels: int = 8) -> nn.Module:
    """``model.factory``; ``model.options`` may set ``channels``."""
    return DigitsCNN(channels)


# ---- the walk-through --------------------------------------------------------------------


def gossiplearn(*args: str) -> str:
    """One CLI command; its stdout. A failure stops the walk-through with its one line."""
    done = subprocess.run(
        [sys.executable, "-m", "gossiplearn", *args], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"gossiplearn {args[0]} failed: {done.stderr.strip()}")
    return done.stdout


def address_of(directory: Path) -> str:
    shown = gossiplearn("keys", "show", str(directory))
    return re.search(r"address:\s+(\S+)", shown).group(1)  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", nargs="?", type=Path, help="where to make the peer directories")
    parser.add_argument("--rounds", type=int, default=3, help="rounds each peer completes")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after (s)")
    options = parser.parse_args()
    if options.dir is not None:
        walk_through(options.dir, options)
        return
    with tempfile.TemporaryDirectory(prefix="digits-cnn-") as temporary:
        walk_through(Path(temporary), options, kept=False)


def walk_through(base: Path, options: argparse.Namespace, kept: bool = True) -> None:
    dirs = [base / f"org-{i}" for i in range(PEERS)]
    for i, directory in enumerate(dirs):
        gossiplearn(
            "init", str(directory), "--model", "digits_cnn:model",
            "--dataset", "digits", "--shard", f"{i}/{PEERS}",
        )  # fmt: skip
        # A quick demo: invite every second (the default, 10 s, suits real networks).
        config = directory / "config.toml"
        text = re.sub(r"(?m)^interval_s = .*$", "interval_s = 1.0", config.read_text())
        config.write_text(text)
    addresses = [address_of(d) for d in dirs]
    for i, directory in enumerate(dirs):
        gossiplearn("allow", str(directory), *(a for j, a in enumerate(addresses) if j != i))
    daemons = [
        subprocess.Popen(
            [sys.executable, "-m", "gossiplearn", "run", str(d)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for d in dirs
    ]
    statuses: list[dict] = []
    try:
        deadline = time.monotonic() + options.timeout
        while time.monotonic() < deadline:
            time.sleep(1.0)
            if any(d.poll() is not None for d in daemons):
                logs = (
                    f"{base}/org-*/logs/peer.log"
                    if kept
                    else "the peers' logs (give a DIR to keep them)"
                )
                raise SystemExit(f"a daemon stopped: see {logs}")
            try:
                statuses = [json.loads(gossiplearn("status", str(d), "--json")) for d in dirs]
            except SystemExit:
                continue  # not serving its status yet
            done = [s["rounds"]["completed"] for s in statuses]
            print(f"rounds completed: {done}", file=sys.stderr)
            if min(done) >= options.rounds:
                break
        else:
            raise SystemExit(f"fewer than {options.rounds} rounds in {options.timeout} s")
    finally:
        for daemon in daemons:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
        for daemon in daemons:
            daemon.wait(timeout=30)
    print(
        json.dumps(
            {
                "peers": [
                    {"rounds": s["rounds"]["completed"], "accuracy": s["accuracy"]}
                    for s in statuses
                ],
                "exit_codes": [d.returncode for d in daemons],
                "dir": str(base) if kept else None,
            }
        )
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
