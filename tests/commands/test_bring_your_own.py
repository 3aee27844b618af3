"""A user's model, data and trainer in ``gossiplearn init`` and ``gossiplearn sim``: every
mistake is one line naming the option or key and what to do, and nothing is written.

The user's code is a module in a directory on PYTHONPATH, as it would be at an organization.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from gossiplearn.peer.learning.trainer import DeviceUnavailable, resolve_device
from tests.commands.test_mistakes import edit, new_peer, one_line

pytestmark = pytest.mark.timeout(120)

USER_MODULE = """
import torch
from torch import nn


class Split(nn.Module):
    def __init__(self, features=64):
        super().__init__()
        self.backbone = nn.Linear(features, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(torch.relu(self.backbone(x)))


class NoSplit(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Linear(64, 10)

    def forward(self, x):
        return self.layers(x)


def good(features=64):
    return Split(features)


def no_split():
    return NoSplit()


def wrong_shape():
    return Split(features=10)


def broken():
    raise RuntimeError("weights file missing")


def not_a_module():
    return {"backbone": 1}


class NoAccuracy:
    def __init__(self, model, data, config):
        self.model = model

    def train_round(self):
        pass

    def finetune_head(self):
        return {}

    def evaluate(self, split="test"):
        return {"mse": 1.0}
"""


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "user_code"
    directory.mkdir()
    (directory / "user_models.py").write_text(textwrap.dedent(USER_MODULE))
    return directory


def gossiplearn(
    user_dir: Path, *args: object, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(user_dir)}
    return subprocess.run(
        [sys.executable, "-m", "gossiplearn", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=100,
    )


INIT_MISTAKES = [
    (
        ["--model", "user_modles:good"],
        ["model.factory module 'user_modles' not found", "PYTHONPATH"],
    ),
    (["--model", "user_models:nope"], ["model.factory 'user_models:nope'", "'nope' not found"]),
    (
        ["--model", "user_models:no_split"],
        ["model.factory 'user_models:no_split'", "no `backbone` submodule", "head_prefixes"],
    ),
    (
        ["--model", "user_models:wrong_shape"],
        [
            "model of model.factory 'user_models:wrong_shape' fails on the samples of "
            "data.loader 'gossiplearn.sim.datasets:digits'",
            "mat1 and mat2 shapes cannot be multiplied",
            "check model.options",
        ],
    ),
    (
        ["--model", "user_models:good", "--model-option", "features=10"],
        ["fails on the samples", "check model.options"],
    ),
    (
        ["--model", "user_models:good", "--model-option", "colour='red'"],
        [
            "model.factory 'user_models:good' failed with model.options {'colour': 'red'}",
            "unexpected keyword argument 'colour'",
        ],
    ),  # fmt: skip
    (
        ["--model", "user_models:broken"],
        ["model.factory 'user_models:broken' failed", "RuntimeError: weights file missing"],
    ),
    (
        ["--model", "user_models:not_a_module"],
        ["returned a dict, not a torch.nn.Module"],
    ),
    (["--data", "no_such_module:shard"], ["data.loader module 'no_such_module' not found"]),
    (
        ["--trainer", "user_models:Missing"],
        ["training.trainer 'user_models:Missing'", "'Missing' not found"],
    ),
]


@pytest.mark.parametrize(("args", "parts"), INIT_MISTAKES)
def test_init_checks_a_users_parts_and_writes_nothing(
    user_dir: Path, tmp_path: Path, args: list[str], parts: list[str]
) -> None:
    peer = tmp_path / "org"
    result = gossiplearn(user_dir, "init", peer, "--dataset", "digits", "--shard", "0/3", *args)
    line = one_line(result, 1, *parts)
    assert "nothing written" in line and "--no-check" in line
    assert not peer.exists()


def test_init_with_a_good_model_says_what_it_checked(user_dir: Path, tmp_path: Path) -> None:
    peer = tmp_path / "org"
    result = gossiplearn(
        user_dir, "init", peer, "--model", "user_models:good", "--model-option", "features=64",
        "--dataset", "digits", "--shard", "0/3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # nn.Linear(64, 16): 64 * 16 + 16 values shared; the head's are not.
    assert "checked:  backbone 1040 values" in result.stdout
    config = (peer / "config.toml").read_text()
    assert 'factory = "user_models:good"' in config and "features = 64" in config


SIM_MISTAKES = [
    (["--model", "user_models:no_split"], 1, ["--model 'user_models:no_split'", "no `backbone`"]),
    (
        ["--model", "user_models:wrong_shape"],
        1,
        [
            "the model of --model 'user_models:wrong_shape' fails on the samples of --dataset "
            "digits",
            "check the model against the data's shapes",
        ],
    ),  # fmt: skip
    (
        ["--model", "user_models:broken"],
        1,
        ["--model 'user_models:broken' failed: RuntimeError: weights file missing"],
    ),
    (["--data", "no_such_module:shard"], 2, ["--data module 'no_such_module' not found"]),
    (["--trainer", "user_models:Missing"], 2, ["--trainer 'user_models:Missing'", "not found"]),
    (
        ["--trainer", "user_models:NoAccuracy"],
        1,
        ["--trainer 'user_models:NoAccuracy': evaluate() returns ['mse']", '"accuracy"'],
    ),
]


@pytest.mark.parametrize(("args", "code", "parts"), SIM_MISTAKES)
def test_sim_checks_a_users_parts_before_any_peer_starts(
    user_dir: Path, tmp_path: Path, args: list[str], code: int, parts: list[str]
) -> None:
    out = tmp_path / "sim"
    result = gossiplearn(
        user_dir, "sim", "--peers", "3", "--rounds", "1", "--mode", "process", "--out", out, *args
    )
    # The progress bar may have drawn; the error is the last line, alone on stderr's tail.
    assert result.returncode == code, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("gossiplearn: "), result.stderr
    for part in parts:
        assert part in last, (part, last)
    assert "Traceback" not in result.stderr
    assert not (out / "results.json").exists()
    assert not (out / "peers").exists()  # no daemon was set up


# ---- the device --------------------------------------------------------------------------


def test_a_cuda_device_that_exists_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda")
    with pytest.raises(DeviceUnavailable, match=r"'cuda:2', but there are 2 CUDA device\(s\)"):
        resolve_device("cuda:2")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("tpu", 'is not a torch device: use "cpu", "cuda[:N]", "mps" or "auto"'),
        ("xla", ': use "cpu", "cuda[:N]" or "auto"'),  # a torch device, not one we train on
    ],
)
def test_a_device_torch_cannot_use_is_named(name: str, message: str) -> None:
    with pytest.raises(DeviceUnavailable) as raised:
        resolve_device(name)
    assert str(raised.value).startswith(f"training.device = {name!r}")
    assert message in str(raised.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: nothing to refuse")
def test_run_on_cuda_without_cuda_is_one_line(tmp_path: Path) -> None:
    directory = new_peer(tmp_path)
    edit(directory, "training", "device", '"cuda"')
    result = subprocess.run(
        [sys.executable, "-m", "gossiplearn", "run", str(directory)],
        capture_output=True,
        text=True,
        timeout=100,
    )
    one_line(result, 1, "training.device = 'cuda'", "no CUDA device", 'training.device = "cpu"')
