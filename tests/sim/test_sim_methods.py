"""What `gossiplearn sim` compares and how it says so: --methods (the plain and equal-budget
baselines), optimizer steps per peer and round in the table and results.json, --eval-every,
personal acceptance reading the validation data once per model, --weight samples, and
results.json's config holding what ran."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from gossiplearn.cli import app
from gossiplearn.peer.learning.learner import Learner
from gossiplearn.peer.learning.trainer import Trainer
from gossiplearn.sim.baselines import SCHEMES, run_baseline
from gossiplearn.sim.config import (
    METHODS,
    SimConfig,
    load_data,
    model_factory,
    train_config,
    trainer_factory,
)
from gossiplearn.sim.experiment import run_config, with_weights
from gossiplearn.sim.memory import run_memory
from gossiplearn.sim.report import validate_results

runner = CliRunner()

#: Small and fast: 3 digits peers, an MLP of 16, 4 mini-batches a round.
CONFIG = SimConfig(
    peers=3, rounds=3, group_size=3, mode="memory", hidden=(16,), steps_per_round=4
).validate()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shards():
    return load_data(CONFIG)


def head_batches(shards) -> float:
    """One head epoch's mini-batches, the mean over the peers."""
    batches = [math.ceil(len(data.train) / CONFIG.batch_size) for data in shards]
    return sum(batches) / len(batches)


def baseline(name, shards, config=CONFIG):
    return run_baseline(
        name,
        shards,
        model_factory(config),
        train_config(config),
        config.rounds,
        seed=config.seed,
        make_trainer=trainer_factory(config),
        eval_every=config.eval_every,
    )


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_each_baseline_counts_the_steps_it_takes(shards, name):
    result = baseline(name, shards)
    assert result.complete and result.rounds_done == CONFIG.rounds
    steps = result.steps_per_round
    assert steps is not None and steps["train"] == CONFIG.steps_per_round
    # The plain methods fine-tune nothing; fedper and the -ft ones one head epoch a round:
    # gossiplearn's budget (the equal-budget comparison).
    head = head_batches(shards) if SCHEMES[name].finetune_head else 0.0
    assert steps["head"] == pytest.approx(head)
    assert steps["total"] == pytest.approx(CONFIG.steps_per_round + head)


def test_plain_fedper_differs_from_fedper_only_by_the_head_fine_tune(shards):
    plain, tuned = baseline("fedper-plain", shards), baseline("fedper", shards)
    assert plain.bytes_per_peer == tuned.bytes_per_peer > 0
    assert plain.final != tuned.final
    # fedavg-ft sends what fedavg sends: the fine-tuned heads never leave the peer.
    assert baseline("fedavg", shards).bytes_per_peer == baseline("fedavg-ft", shards).bytes_per_peer


def test_eval_every_skips_rounds_but_always_evaluates_the_last(shards):
    config = replace(CONFIG, eval_every=2)
    evaluated = {"baseline": baseline("fedavg", shards, config)}
    evaluated["gossiplearn"] = run_memory(config, shards)
    for result in evaluated.values():
        assert result.rounds_done == 3 and result.evaluated_rounds == [2, 3]
        assert all(math.isnan(a) for a in result.accuracy_per_round[0])
        assert result.final == result.accuracy_per_round[2]


def test_acceptance_reads_the_validation_data_once_per_model(shards, monkeypatch):
    passes: list[str] = []
    applies: list[int] = []
    per_sample, apply = Trainer._per_sample, Learner.apply

    def counted_per_sample(self, dataset):
        if dataset is self.val_data:
            passes.append("validation")
        return per_sample(self, dataset)

    def counted_apply(self, *args, **kwargs):
        applies.append(1)
        return apply(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_per_sample", counted_per_sample)
    monkeypatch.setattr(Learner, "apply", counted_apply)
    result = run_memory(replace(CONFIG, rounds=2), shards)
    assert result.extra["rounds_aborted"] == 0 and applies
    # The peer's own model and the average with its head fine-tuned: one pass each.
    assert len(passes) == 2 * len(applies)


def test_weight_samples_caps_at_the_largest_shard_and_takes_no_cap(shards):
    config = with_weights(replace(CONFIG, weight="samples"), shards)
    assert config.max_weight == max(len(data.train) for data in shards) > 1
    with pytest.raises(ValueError, match="--weight samples sets the cap itself"):
        replace(CONFIG, weight="samples", max_weight=100).validate()


@pytest.mark.parametrize("weights", [(1, 1, 1, 1), (22_774, 150, 40, 3)])
def test_a_large_cap_costs_the_average_no_resolution(weights):
    """Each member encodes share x vector and rounds once: the average is within m x 2^-21
    (32-bit ring, frac_bits 20) or m units (16-bit ring) of the exact one, whatever the
    weights (docs/simulation.md, Weights)."""
    from gossiplearn.crypto.narrow import NarrowRing
    from gossiplearn.crypto.ring import RING32, decode, encode

    vectors = np.random.default_rng(0).normal(0, 0.05, size=(len(weights), 100_000))
    shares = np.asarray(weights, dtype=np.float64) / sum(weights)
    exact = shares @ vectors
    total = sum(encode(v, 20, scale=a)[0] for v, a in zip(vectors, shares, strict=True))
    error = np.abs(decode(np.asarray(total, dtype=np.uint32), 20, RING32, np.float64) - exact)
    assert error.max() <= len(weights) * 2.0**-21
    ring = NarrowRing(16, len(weights), 3)
    total16 = np.zeros(vectors.shape[1], dtype=ring.unsigned)
    for index, (vector, share) in enumerate(zip(vectors, shares, strict=True)):
        total16 += ring.encode(vector.astype(np.float32), share, np.random.default_rng(index))[0]
    decoded = ring.decode(total16, np.empty(vectors.shape[1], dtype=np.float32))
    assert np.abs(decoded - exact).max() <= len(weights) * ring.unit * 1.001


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"methods": ("gossiplearn", "fedsgd")}, "--methods takes"),
        ({"methods": ("local", "local")}, "names a method twice"),
        ({"eval_every": 0}, "--eval-every"),
        ({"momentum": 1.0}, "--momentum"),
        ({"batch_size": 0}, "--batch-size"),
        ({"head_epochs": -1}, "--head-epochs"),
        ({"validation": 0.0}, "--validation"),
        ({"trainer_options": {"lr": 0.1}}, "--trainer-option is for your trainer"),
        ({"data_options": {"lines": 3}}, "--data-option is for your data"),
    ],
)
def test_bad_settings_are_refused_by_their_flag(change, message):
    with pytest.raises(ValueError, match=message):
        replace(CONFIG, **change).validate()


def test_the_config_recorded_leaves_out_what_did_not_apply(shards):
    document = run_config(replace(CONFIG, methods=("local", "fedper-plain")), shards)
    assert document["dataset"] == "digits" and document["hidden"] == [16]
    assert document["methods"] == ["local", "fedper-plain"]
    for absent in ("model", "data", "trainer", "trainer_options", "mode", "ring_bits", "epochs"):
        assert absent not in document, absent
    assert set(METHODS) >= set(document["methods"])


def test_sim_runs_the_methods_asked_for_and_shows_their_steps(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "sim", "--mode", "memory", "--peers", "3", "--rounds", "3", "--group-size", "3",
            "--hidden", "16", "--steps-per-round", "4", "--momentum", "0", "--batch-size", "16",
            "--methods", "gossiplearn,fedper-plain,fedavg-ft", "--eval-every", "2",
            "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads((out / "results.json").read_text())
    validate_results(document)
    assert (document["complete"], document["interrupted"]) == (True, None)
    assert list(document["methods"]) == ["gossiplearn", "fedper-plain", "fedavg-ft"]
    assert document["config"]["momentum"] == 0 and document["config"]["batch_size"] == 16
    for name, method in document["methods"].items():
        assert method["rounds_done"] == 3 and method["complete"], name
        assert method["evaluated_rounds"] == [2, 3], name
        assert method["accuracy_per_round"][0] == [None] * 3, name
        assert method["steps_per_round"]["train"] == 4, name
    assert document["methods"]["fedper-plain"]["steps_per_round"]["head"] == 0
    assert document["methods"]["fedavg-ft"]["steps_per_round"]["head"] > 0
    # Not a terminal: a plain line per round, and the steps in the table (train+head).
    assert "fedper-plain: round 3/3, mean accuracy" in result.output
    assert "gossiplearn: round 1/3, mean accuracy not evaluated" in result.output
    assert "4+0" in result.output


def test_the_flags_that_choose_methods_do_not_mix(tmp_path):
    out = tmp_path / "run"
    both = runner.invoke(
        app, ["sim", "--no-baselines", "--methods", "local", "--mode", "memory", "--out", str(out)]
    )
    assert both.exit_code == 2 and "give only --methods" in both.output
    alone = runner.invoke(app, ["sim", "--trainer-option", "lr=1", "--out", str(out)])
    assert alone.exit_code == 2 and "--trainer-option is for your trainer" in alone.output
    assert not out.exists()


def test_results_json_skips_a_round_only_when_writing_would_cost_too_much(tmp_path):
    from gossiplearn.sim.experiment import Recorder
    from gossiplearn.sim.results import MethodResult

    recorder = Recorder(tmp_path, {"peers": 3}, started=0.0)
    result = MethodResult("local", [[0.5, 0.5, 0.5]], complete=False)
    recorder.update(result)  # the first round is always written
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["methods"]["local"]["rounds_done"] == 1
    recorder._write_s = 1e9  # as if a write took longer than the run could afford
    result.accuracy_per_round.append([0.6, 0.6, 0.6])
    recorder.update(result)
    assert json.loads((tmp_path / "results.json").read_text()) == written
    result.complete = True
    recorder.finish(result)  # the end of a method always writes
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["methods"]["local"]["rounds_done"] == 2
