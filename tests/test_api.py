"""The public API: ``gossiplearn.Peer`` / ``open_peer`` in a user's own loop.

The first test is the issue's claim, on the path users run: three processes, each its own
training loop (examples/tabular_regression.py) with ``gossiplearn.Peer`` over libp2p, end with
identical backbones and a lower validation MSE than the same loop alone. The others pin what
``sync`` does to the model (the round's change added to the backbone as it is now, refusal
with ``validate``), what ``import gossiplearn`` exports, and the errors a user can meet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import trio
from torch import nn

import gossiplearn
from gossiplearn.peer.dirlock import DirectoryLocked
from gossiplearn.testing.cluster import prepare

ROOT = Path(__file__).resolve().parents[1]
#: Fixed-point averaging at frac_bits = 20 rounds each value to 2^-20 (about 1e-6).
FIXED_POINT_ATOL = 1e-5


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(4, 3)
        self.head = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def backbone_of(model: Tiny) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in model.backbone.parameters()]).numpy()


def fill_backbone(model: Tiny, value: float) -> None:
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.fill_(value)


def run_each(dirs: list[Path], one: Callable[[int, Path], Awaitable[None]]) -> None:
    """``one(i, directory)`` for every peer directory, concurrently, in one trio run."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i, directory in enumerate(dirs):
                nursery.start_soon(one, i, directory)

    trio.run(main)


def tabular_regression(dirs: list[Path], *options: str) -> list[dict]:
    """examples/tabular_regression.py in three processes, one per directory; their JSON."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / "tabular_regression.py"), str(d)]
            + ["--org", str(i), "--orgs", "3", *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i, d in enumerate(dirs)
    ]
    results = []
    for run in runs:
        out, err = run.communicate(timeout=200)
        assert run.returncode == 0, err[-2000:]
        assert err == "", err[-2000:]  # the peer logs to DIR/logs/peer.log, not to stderr
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_three_processes_with_their_own_loops_beat_training_alone(tmp_path: Path) -> None:
    dirs = prepare(tmp_path, 3, interval_s=0.3, group_size=3)
    results = tabular_regression(dirs)
    assert all(r["rounds"] >= 1 for r in results), results
    assert len({r["backbone"] for r in results}) == 1, results  # the group's one backbone
    for r in results:
        assert r["val_mse"] < r["alone_mse"], results
    # What `gossiplearn status` reads is there too: the peer wrote its history.
    assert all((d / "logs" / "peer.log").read_text().count("finished") >= 1 for d in dirs)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_validating_after_a_head_fit_keeps_the_averages_that_help(tmp_path: Path) -> None:
    """The issue's case: validate judged each average under the head fitted to the old
    backbone and refused nearly all of them (one org refused all 4 of its rounds and ended
    exactly as alone). Judged after a 200-step head fit, as the daemon judges (measured: 7, 7
    and 9 of 9 applied; MSE 0.371 / 0.503 / 0.867 against 0.488 / 0.587 / 1.200 alone)."""
    dirs = prepare(tmp_path, 3, interval_s=0.3, group_size=3)
    results = tabular_regression(dirs, "--validate")
    for r in results:
        assert r["applied"] >= 1, results
        assert r["val_mse"] < r["alone_mse"], results


def test_sync_adds_the_rounds_change_to_the_backbone_as_it_is_now(tmp_path: Path) -> None:
    """Three peers offer backbones filled with 1, 2 and 6; each then takes a 'training step'
    (adds 0.5 * i) before taking the average in: it ends at 3 + 0.5 * i, steps kept."""
    dirs = prepare(tmp_path, 3, interval_s=0.2, group_size=3)
    ends: dict[int, tuple[np.ndarray, gossiplearn.SyncResult]] = {}

    async def one(i: int, directory: Path) -> None:
        model = Tiny()
        fill_backbone(model, [1.0, 2.0, 6.0][i])
        async with gossiplearn.open_peer(directory) as peer:
            first = await peer.sync(model)
            assert first.offered and first.applied == 0
            with trio.fail_after(60):
                while peer.status()["rounds"]["completed"] < 1:
                    await trio.sleep(0.05)
            with torch.no_grad():
                for p in model.backbone.parameters():
                    p.add_(0.5 * i)
            result = await peer.sync(model)
            ends[i] = (backbone_of(model), result)
            # Stay until every peer took its average in: leaving ABORTs nothing now, but the
            # others' status must still see this peer.
            with trio.fail_after(30):
                while len(ends) < 3:
                    await trio.sleep(0.05)

    run_each(dirs, one)
    for i, (backbone, result) in ends.items():
        assert result.applied == 1 and result.refused == 0
        assert result.rounds_completed == 1
        np.testing.assert_allclose(backbone, 3.0 + 0.5 * i, atol=FIXED_POINT_ATOL)


def test_validate_refuses_an_average_that_makes_it_worse(tmp_path: Path) -> None:
    """Peer 0 validates by distance to its own backbone value (1.0): the average (3.0) is
    worse and is undone; peers 1 and 2 take it."""
    dirs = prepare(tmp_path, 3, interval_s=0.2, group_size=3)
    ends: dict[int, tuple[np.ndarray, gossiplearn.SyncResult, dict]] = {}

    def distance_to_one(model: Tiny) -> float:
        return float(np.abs(backbone_of(model) - 1.0).mean())

    async def one(i: int, directory: Path) -> None:
        model = Tiny()
        fill_backbone(model, [1.0, 2.0, 6.0][i])
        validate = distance_to_one if i == 0 else None
        async with gossiplearn.open_peer(directory, validate=validate) as peer:
            await peer.sync(model)
            with trio.fail_after(60):
                while peer.status()["rounds"]["completed"] < 1:
                    await trio.sleep(0.05)
            result = await peer.sync(model)
            ends[i] = (backbone_of(model), result, peer.status()["learning"])
            with trio.fail_after(30):
                while len(ends) < 3:
                    await trio.sleep(0.05)

    run_each(dirs, one)
    backbone, result, learning = ends[0]
    assert (result.applied, result.refused) == (0, 1)
    np.testing.assert_array_equal(backbone, 1.0)  # exactly as before the average
    assert learning["averages_refused"] == 1
    assert learning["validation_loss"] == pytest.approx(2.0, abs=FIXED_POINT_ATOL)
    for i in (1, 2):
        backbone, result, learning = ends[i]
        assert (result.applied, result.refused) == (1, 0)
        np.testing.assert_allclose(backbone, 3.0, atol=FIXED_POINT_ATOL)
        assert learning["averages_applied"] == 1


def test_validate_after_the_head_fit_applies_averages_that_help_once_the_head_adapts(
    tmp_path: Path,
) -> None:
    """Three peers offer backbones filled with 1, 2 and 6 (their average: 3), each with a head
    fitted to its own backbone for the same regression, y = 18 (sum(x) + 1) + 2. Under its old
    head the average is far off for everyone (MSE 16 -> 1600 at peer 0). Peer 0 fits its head
    to the new backbone first (``finetune_head``: least squares on the backbone's features),
    then validates: MSE 16 -> 0, the average is applied. Peer 1 validates under its old head
    and refuses it. Peer 2 fits its head too, but validates by its backbone's distance to its
    own (6): refused, and its head is put back as it was."""
    dirs = prepare(tmp_path, 3, interval_s=0.2, group_size=3)
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    y = 18 * (x.sum(1, keepdim=True) + 1) + 2
    ends: dict[int, tuple[Tiny, gossiplearn.SyncResult, dict, float]] = {}

    def mse(model: Tiny) -> float:
        with torch.no_grad():
            return float(nn.functional.mse_loss(model(x), y))

    def fit_head(model: Tiny) -> None:
        with torch.no_grad():
            features = torch.cat([model.backbone(x), torch.ones(len(x), 1)], dim=1).double()
            # The backbone's three features are (almost) equal: an SVD solve cuts that rank.
            fit = torch.linalg.lstsq(features, y.double(), rcond=1e-6, driver="gelsd")
            model.head.weight.copy_(fit.solution[:3].T)
            model.head.bias.copy_(fit.solution[3])

    def distance_to_six(model: Tiny) -> float:
        return float(np.abs(backbone_of(model) - 6.0).mean())

    validators = [mse, mse, distance_to_six]
    fitters = [fit_head, None, fit_head]

    async def one(i: int, directory: Path) -> None:
        model = Tiny()
        fill_backbone(model, [1.0, 2.0, 6.0][i])
        with torch.no_grad():  # each head fitted to its own backbone, up to an offset
            model.head.weight.fill_([6.0, 3.0, 1.0][i])
            model.head.bias.fill_([6.0, 3.0, 2.0][i])
        before = mse(model)
        async with gossiplearn.open_peer(
            directory, validate=validators[i], finetune_head=fitters[i]
        ) as peer:
            await peer.sync(model)
            with trio.fail_after(60):
                while peer.status()["rounds"]["completed"] < 1:
                    await trio.sleep(0.05)
            head = [p.detach().clone() for p in model.head.parameters()]
            result = await peer.sync(model)
            ends[i] = (model, result, peer.status()["learning"], before)
            if i == 2:  # refused: the head it fitted for judging is undone too
                for kept, now in zip(head, model.head.parameters(), strict=True):
                    assert torch.equal(kept, now)
            with trio.fail_after(30):
                while len(ends) < 3:
                    await trio.sleep(0.05)

    run_each(dirs, one)
    model, result, learning, before = ends[0]
    assert before == pytest.approx(16.0, rel=1e-4)
    assert (result.applied, result.refused) == (1, 0)
    np.testing.assert_allclose(backbone_of(model), 3.0, atol=FIXED_POINT_ATOL)
    assert mse(model) < 1e-3 and learning["validation_loss"] < 1e-3
    model, result, learning, before = ends[1]
    assert before == pytest.approx(1.0, rel=1e-4)
    assert (result.applied, result.refused) == (0, 1)
    np.testing.assert_array_equal(backbone_of(model), 2.0)  # exactly as before the average
    assert mse(model) == before and learning["validation_loss"] > 100
    model, result, learning, _ = ends[2]
    assert (result.applied, result.refused) == (0, 1)
    np.testing.assert_array_equal(backbone_of(model), 6.0)
    assert model.head.weight.eq(1.0).all() and model.head.bias.eq(2.0).all()


def test_the_threaded_peer_serves_status_and_refuses_a_second_model(tmp_path: Path) -> None:
    (directory,) = prepare(tmp_path, 1)
    with gossiplearn.Peer(directory) as peer:
        model = Tiny()
        result = peer.sync(model)
        assert result == gossiplearn.SyncResult(
            applied=0, refused=0, offered=True, rounds_completed=0
        )
        status = peer.status()
        assert status["learning"]["driven_by"] == "gossiplearn.Peer.sync"
        assert status["peer_id"].startswith("12D3KooW")
        with pytest.raises(ValueError, match="another model than before"):
            peer.sync(Tiny())
        # The directory is this peer's while it runs: a second one says who holds it.
        with (
            pytest.raises(DirectoryLocked, match=f"pid {os.getpid()}"),
            gossiplearn.Peer(directory),
        ):
            pass
    with pytest.raises(RuntimeError, match="is not running"):
        peer.sync(model)


PEER_THAT_LOGS = """
import logging, pathlib, sys, time
logging.basicConfig(level=logging.INFO)  # the user's own logging, as many scripts have it
import gossiplearn, torch
from torch import nn

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone, self.head = nn.Linear(4, 3), nn.Linear(3, 1)

log = pathlib.Path(sys.argv[1]) / "logs" / "peer.log"
with gossiplearn.Peer(sys.argv[1]) as peer:
    peer.sync(Tiny())
    while "Failed to open TCP stream" not in log.read_text():  # its bootstrap peer is away
        time.sleep(0.1)
logging.getLogger("gossiplearn.example").warning("the program's own line")
print("ok")
"""


@pytest.mark.timeout(120)
def test_the_peer_logs_to_its_file_not_to_the_programs_stderr(tmp_path: Path) -> None:
    """gossiplearn's records (INFO and up) and libp2p's warnings go to DIR/logs/peer.log only,
    even when the program configured the root logger; its own records still reach stderr."""
    from gossiplearn.crypto.identity import Identity
    from gossiplearn.peer.config import load_config, save_config

    (directory,) = prepare(tmp_path, 1)
    nobody = Identity.generate().peer_id
    config = load_config(directory)
    config.peer.allow = [nobody]
    config.peer.bootstrap = [f"/ip4/127.0.0.1/tcp/1/p2p/{nobody}"]  # nothing listens there
    config.discovery.ping_interval_s = 0.5
    save_config(directory, config)
    done = subprocess.run(
        [sys.executable, "-c", PEER_THAT_LOGS, str(directory)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "ok\n"
    assert done.stderr == "WARNING:gossiplearn.example:the program's own line\n"
    log = (directory / "logs" / "peer.log").read_text()
    assert "Failed to open TCP stream" in log and "INFO gossiplearn.peer: peer " in log


def test_import_gossiplearn_is_cheap_and_exports_what_it_lists() -> None:
    code = (
        "import sys, gossiplearn\n"
        "heavy = sorted(m for m in ('torch', 'trio', 'libp2p') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "missing = [n for n in gossiplearn.__all__ if getattr(gossiplearn, n, None) is None]\n"
        "assert not missing, missing\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]
    assert set(gossiplearn.__all__) == set(gossiplearn._EXPORTS) | {"__version__"}
    assert sorted(dir(gossiplearn)) == sorted(gossiplearn.__all__)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        gossiplearn.Nope  # noqa: B018
    assert (ROOT / "gossiplearn" / "py.typed").is_file()
