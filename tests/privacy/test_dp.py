"""Record-level differential privacy ([privacy], gossiplearn/privacy/dp.py): the settings are
checked, the accountant is Opacus's, the clipping is real, the budget is enforced by the daemon
(with a variant that shows the check can fail), the simulation trains every method with DP,
and a user trainer that cannot report its spending is refused."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trio

from gossiplearn.peer.config import ConfigError, load_config, parse_config, save_config
from gossiplearn.peer.learning.architectures import mlp
from gossiplearn.peer.learning.builtin import BuiltinLearning
from gossiplearn.peer.learning.data import TrainerError, peer_data
from gossiplearn.peer.learning.split_model import SplitModel
from gossiplearn.peer.learning.trainer import TrainConfig, Trainer, make_trainer
from gossiplearn.privacy import PrivacyConfig, PrivacyError, PrivacyLedger
from gossiplearn.sim.datasets import digits
from gossiplearn.testing.cluster import prepare, running

pytest.importorskip("opacus")


def digits_trainer(privacy: PrivacyConfig | None, **train: object) -> Trainer:
    torch.manual_seed(0)
    model = SplitModel(mlp(64, (32,), 10))
    data = peer_data(digits("0/4", "iid", seed=0, validation=0.1))
    config = TrainConfig(**{"steps_per_round": 5, "batch_size": 16, **train}, privacy=privacy)  # type: ignore[arg-type]
    return Trainer(model, data.train, data.validation, config, data.test)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("epsilon = 0.0", "privacy.epsilon must be > 0"),
        ("delta = 1.5", "privacy.delta must be in (0, 1)"),
        ("max_grad_norm = -1.0", "privacy.max_grad_norm must be > 0"),
        ("noise_multiplier = -0.5", "privacy.noise_multiplier must be >= 0"),
        ("rounds = 0", "privacy.rounds must be >= 1"),
        ('epsilon = "8"', "privacy.epsilon must be float, got str"),
    ],
)
def test_privacy_settings_are_checked_in_one_line_naming_the_key(
    section: str, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(f"[privacy]\nenabled = true\n{section}\n", "org/config.toml")
    text = str(raised.value)
    assert text.startswith("org/config.toml: ") and message in text and "\n" not in text


def test_privacy_is_off_by_default_and_documented_in_the_written_file(tmp_path: Path) -> None:
    config = parse_config("")
    assert config.privacy.enabled is False and config.train_config().privacy is None
    save_config(tmp_path, config)
    text = (tmp_path / "config.toml").read_text()
    assert "[privacy]" in text and "# Each record's gradient is clipped" in text
    assert load_config(tmp_path).privacy == config.privacy


def test_a_local_reference_with_privacy_is_refused() -> None:
    with pytest.raises(ConfigError, match="training.local_reference = false"):
        parse_config("[training]\nlocal_reference = true\n[privacy]\nenabled = true\n")


def test_delta_must_be_below_one_over_the_training_samples() -> None:
    with pytest.raises(
        PrivacyError, match=r"privacy.delta = 0.01 must be below 1/training samples"
    ):
        digits_trainer(PrivacyConfig(epsilon=8, delta=0.01))


def test_the_ledger_is_opacus_rdp_accountant_and_grows_with_steps() -> None:
    from opacus.accountants import RDPAccountant

    ledger = PrivacyLedger(PrivacyConfig(epsilon=100), noise_multiplier=1.0, sample_rate=0.01)
    spent = []
    for _ in range(5):
        ledger.spend(200)
        spent.append(ledger.epsilon())
    assert all(a < b for a, b in zip(spent, spent[1:], strict=False))
    reference = RDPAccountant()
    for _ in range(1000):
        reference.step(noise_multiplier=1.0, sample_rate=0.01)
    assert spent[-1] == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-9)
    # A fixed known value (sigma 1, q 0.01, 1000 steps, delta 1e-5; RDP): regressions show.
    assert spent[-1] == pytest.approx(2.1014, abs=1e-3)
    assert ledger.epsilon(extra_steps=1000) > spent[-1] and ledger.steps == 1000


def test_the_derived_noise_makes_the_planned_rounds_spend_the_budget() -> None:
    trainer = digits_trainer(PrivacyConfig(epsilon=4.0, rounds=3, noise_seed=0))
    for _ in range(3):
        assert trainer.privacy_next_round() <= 4.0
        trainer.train_round()
        trainer.finetune_head()
    spent, delta = trainer.privacy_spent()
    assert 3.0 < spent <= 4.0 and delta == 1e-5
    assert trainer.privacy_next_round() > 4.0  # a fourth round would not fit


def _one_step_update(privacy: PrivacyConfig | None) -> float:
    """The norm of the change one full-batch SGD step (lr 1) makes, on inputs scaled so the
    per-record gradients are huge."""
    trainer = digits_trainer(privacy, batch_size=10_000, lr=1.0, momentum=0.0, steps_per_round=1)
    dataset = trainer.train_data
    inputs, labels = dataset.tensors  # type: ignore[attr-defined]
    trainer.train_data = torch.utils.data.TensorDataset(inputs * 1000, labels)
    before = torch.cat([p.detach().flatten().clone() for p in trainer.model.module.parameters()])
    trainer.train_round()
    after = torch.cat([p.detach().flatten() for p in trainer.model.module.parameters()])
    return float((after - before).norm())


def test_per_record_gradients_are_clipped_to_max_grad_norm() -> None:
    # Sample rate 1 (batch >= records) and little noise (std 0.01 x clip / records per
    # value): the step is the mean of the clipped per-record gradients, so its norm is at
    # most max_grad_norm (lr 1), give or take the noise (~1e-4 here).
    clip = 0.1
    private = _one_step_update(
        PrivacyConfig(epsilon=1e12, delta=1e-5, max_grad_norm=clip, noise_multiplier=0.01)
    )
    unclipped = _one_step_update(None)
    assert private <= clip * 1.01, private
    assert unclipped > 100 * clip  # the same step without privacy is far larger


def test_a_user_trainer_without_privacy_spent_is_refused_with_one_line() -> None:
    from tests.peer.learning.user_parts import regression_data, regression_model

    data = peer_data(regression_data(0, 3))
    model = SplitModel(regression_model())
    config = TrainConfig(privacy=PrivacyConfig(epsilon=8, noise_multiplier=1.0))
    with pytest.raises(TrainerError) as raised:
        make_trainer("tests.peer.learning.user_parts:RegressionTrainer", model, data, config)
    text = str(raised.value)
    assert "does not report its privacy spending: implement privacy_spent()" in text
    assert "\n" not in text


# ---- the daemon: the budget is enforced, said in the log, the status and /metrics ----

STEPS, ROUNDS_AFFORDED = 3, 2


def _budget_for(rounds: int, samples: int, batch_size: int) -> float:
    ledger = PrivacyLedger(PrivacyConfig(epsilon=1e6), 1.0, min(1.0, batch_size / samples))
    return ledger.epsilon(rounds * STEPS) * 1.0001


def _assert_budget_enforced(snapshots: list[tuple[dict, str, dict]]) -> None:
    for document, metrics, ledger in snapshots:
        privacy = document["privacy"]
        assert privacy["exhausted"], privacy
        assert privacy["epsilon_spent"] <= privacy["epsilon"], privacy
        assert privacy["steps"] == ROUNDS_AFFORDED * STEPS, privacy
        assert "gossiplearn_privacy_budget_exhausted 1.0" in metrics
        assert f"gossiplearn_privacy_epsilon_spent {privacy['epsilon_spent']}" in metrics
        assert ledger["epsilon_spent"] == pytest.approx(privacy["epsilon_spent"])


async def _run_until_spent(tmp_path: Path, seconds: float) -> list[tuple[dict, str, dict]]:
    """Three private daemons whose budget pays for ROUNDS_AFFORDED budgets; their status,
    /metrics and ledger file once all say it is spent (or after ``seconds``)."""
    dirs = prepare(tmp_path, 3, interval_s=0.3, group_size=3)
    for directory in dirs:
        config = load_config(directory)
        config.training.steps_per_round = STEPS
        config.training.head_epochs = 0  # one budget is STEPS steps
        config.privacy.enabled = True
        config.privacy.noise_multiplier = 1.0
        save_config(directory, config)
    async with running(dirs) as peers:
        # Each has trained its first budget (budget 1e6 then); now just enough for
        # ROUNDS_AFFORDED at its own sampling rate.
        for peer in peers:
            trainer = peer.builtin.learner.trainer  # type: ignore[union-attr]
            budget = _budget_for(ROUNDS_AFFORDED, trainer.num_train_samples, 32)
            trainer.privacy.config = dataclasses.replace(trainer.privacy.config, epsilon=budget)
            peer.config.privacy.epsilon = budget
        with trio.move_on_after(seconds):
            while not all(p.builtin.privacy_exhausted for p in peers):
                await trio.sleep(0.2)
        await trio.sleep(1.0)  # anything still running would spend more here
        return [
            (
                peer.status_document(),
                peer._render_metrics().decode(),
                json.loads((peer.directory / "privacy.json").read_text()),
            )
            for peer in peers
        ]


@pytest.mark.timeout(60)
async def test_a_peer_that_spent_its_budget_stops_training_and_contributing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="gossiplearn.peer")
    _assert_budget_enforced(await _run_until_spent(tmp_path, 30))
    said = [r.getMessage() for r in caplog.records if "privacy budget spent" in r.getMessage()]
    assert len(said) == 3 and "this peer no longer trains or contributes" in said[0]


@pytest.mark.timeout(60)
async def test_without_enforcement_the_same_check_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Switch both guards off (the schedule's and the trainer's): peers train on past the
    # budget, and the assertion of the test above catches it.
    monkeypatch.setattr(BuiltinLearning, "_privacy_affords_round", lambda self, runtime: True)
    monkeypatch.setattr(PrivacyLedger, "affords", lambda self, steps: True)
    snapshots = await _run_until_spent(tmp_path, 8)
    with pytest.raises(AssertionError):
        _assert_budget_enforced(snapshots)


# ---- the simulation ----


@pytest.mark.timeout(60)
def test_sim_memory_mode_trains_every_method_with_dp(tmp_path: Path) -> None:
    from rich.console import Console

    from gossiplearn.sim.config import SimConfig
    from gossiplearn.sim.experiment import run_experiment

    config = SimConfig(peers=4, rounds=3, mode="memory", dp_epsilon=8.0).validate()
    run_experiment(config, tmp_path, console=Console(quiet=True))
    results = json.loads((tmp_path / "results.json").read_text())
    methods = results["methods"]
    assert set(methods) == {"gossiplearn", "local", "fedavg", "fedper"}
    for name, method in methods.items():
        spent = method["extra"]["epsilon_spent_max"]
        assert 0 < spent <= 8.0, (name, spent)
        assert method["summary"]["mean"] > 0.2, (name, method["summary"])  # chance: 0.1
    # Without a head fine-tune the local and FedAvg peers spend less than FedPer's.
    assert (
        methods["local"]["extra"]["epsilon_spent_max"]
        < (methods["fedper"]["extra"]["epsilon_spent_max"])
    )
    assert math.isclose(
        methods["gossiplearn"]["extra"]["epsilon_spent_max"],
        methods["fedper"]["extra"]["epsilon_spent_max"],
        rel_tol=0.2,
    )


def test_sim_rejects_bad_dp_settings() -> None:
    from gossiplearn.sim.config import SimConfig

    with pytest.raises(ValueError, match="--dp-delta must be in"):
        SimConfig(mode="memory", dp_epsilon=8.0, dp_delta=2.0).validate()
    np.testing.assert_equal(SimConfig().dp_epsilon, 0.0)


def test_make_private_gives_a_user_loop_opacus_accounting() -> None:
    from gossiplearn.privacy import make_private

    torch.manual_seed(0)
    data = peer_data(digits("0/4", "iid", seed=0, validation=0.1))
    module = mlp(64, (32,), 10)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(data.train, batch_size=32)
    config = PrivacyConfig(epsilon=5.0)
    module, optimizer, loader, accountant = make_private(
        module, optimizer, loader, config, steps=len(loader)
    )
    for inputs, labels in loader:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(module(inputs), labels).backward()
        optimizer.step()
    assert 0 < accountant.get_epsilon(config.delta) <= 5.0
    with pytest.raises(PrivacyError, match="give steps"):
        make_private(mlp(64, (32,), 10), optimizer, loader, config)
