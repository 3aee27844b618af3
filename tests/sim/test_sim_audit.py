"""``gossiplearn sim --audit``: every method's final models audited, in results.json and the
table; refused outside memory mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gossiplearn.sim.audit import AUDIT_KEYS
from gossiplearn.sim.report import validate_results

METHODS = ("gossiplearn", "local", "fedavg", "fedper")


def sim(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gossiplearn.cli", "sim", "--peers", "3", "--rounds", "2"]
    return subprocess.run(
        [*command, "--out", str(out), *args], capture_output=True, text=True, timeout=120
    )


def test_sim_audit_memory_mode_audits_every_method(tmp_path: Path) -> None:
    result = sim(tmp_path / "out", "--mode", "memory", "--audit", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert "MIA AUC (max)" in result.stdout
    assert "auditing fedper: peer 3/3" in result.stderr  # progress, on stderr only
    assert "auditing" not in result.stdout
    document = json.loads((tmp_path / "out" / "results.json").read_text())
    validate_results(document)
    assert set(document["methods"]) == set(METHODS)
    for name in METHODS:
        audit = document["methods"][name]["audit"]
        assert set(audit) == set(AUDIT_KEYS)
        for key in ("auc_loss", "auc_lira", "tpr_at_1pct_lira"):
            assert len(audit[key]) == 3
            assert all(0.0 <= value <= 1.0 for value in audit[key]), (name, key, audit[key])
        for key in ("mean_auc_loss", "mean_auc_lira", "max_auc_lira"):
            assert 0.0 <= audit[key] <= 1.0
        assert audit["max_auc_lira"] == max(audit["auc_lira"])


def test_sim_audit_is_deterministic_and_leaves_the_results_alone(tmp_path: Path) -> None:
    methods = []
    for run, flags in (("a", ["--audit"]), ("b", ["--audit"]), ("c", [])):
        result = sim(tmp_path / run, "--mode", "memory", "--no-baselines", *flags)
        assert result.returncode == 0, result.stderr
        document = json.loads((tmp_path / run / "results.json").read_text())
        methods.append(document["methods"]["gossiplearn"])
    assert methods[0]["audit"] == methods[1]["audit"]
    # Auditing reads the final models: the accuracies are those of a run without it.
    assert methods[0]["accuracy_per_round"] == methods[2]["accuracy_per_round"]


def test_sim_without_audit_writes_no_audit_and_no_column(tmp_path: Path) -> None:
    result = sim(tmp_path / "out", "--mode", "memory", "--no-baselines")
    assert result.returncode == 0, result.stderr
    assert "MIA AUC" not in result.stdout
    document = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "audit" not in document["methods"]["gossiplearn"]


@pytest.mark.parametrize("mode", ["process", "inproc"])
def test_sim_audit_outside_memory_mode_is_refused_in_one_line(tmp_path: Path, mode: str) -> None:
    result = sim(tmp_path / "out", "--mode", mode, "--audit")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gossiplearn: --audit ")
    assert "use --mode memory" in lines[0]
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_sim_audit_references_one_is_refused(tmp_path: Path) -> None:
    result = sim(tmp_path / "out", "--mode", "memory", "--audit", "--audit-references", "1")
    assert result.returncode == 2
    assert "--audit-references must be 0" in result.stderr


def test_results_validation_rejects_an_audit_auc_outside_zero_one() -> None:
    audit = dict.fromkeys(("mean_auc_loss", "mean_auc_lira", "max_auc_lira"), 0.5)
    audit |= {"auc_loss": [1.5], "auc_lira": [0.5], "tpr_at_1pct_lira": [0.0]}
    method = {
        "accuracy_per_round": [[0.5]],
        "final": [0.5],
        "summary": {"mean": 0.5, "p10": 0.5, "min": 0.5},
        "bytes_per_peer": 0.0,
        "wall_s": 0.0,
        "extra": {},
        "audit": audit,
    }
    document = {"schema": 1, "config": {}, "peers": ["peer-0"], "methods": {"local": method}}
    with pytest.raises(ValueError, match=r"audit\.auc_loss\[0\]"):
        validate_results(document)
