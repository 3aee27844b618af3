"""docs/config.md is generated from the config schema, and every parameter has one home.

- The reference page is what ``python -m gossiplearn.peer.config --reference`` prints now, so a
  key added, renamed, re-defaulted or re-documented in gossiplearn/peer/config.py fails here
  until the page is regenerated.
- ``[training]`` holds every :class:`TrainConfig` field under its own name and default (the
  trainer's settings are built from the section by name, not copied field by field).
- The daemon and ``gossiplearn sim``'s memory mode build the round machine's
  :class:`RoundConfig` through the same function.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

from gossiplearn.peer.config import (
    REFERENCE_COMMAND,
    PeerConfig,
    RoundSection,
    TrainingSection,
    config_reference,
    parse_config,
    render_config,
    train_config_fields,
)

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "config.md"


def test_docs_config_md_is_the_generated_reference() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == config_reference(), (
        f"docs/config.md is out of date with gossiplearn/peer/config.py: run `{REFERENCE_COMMAND}`"
    )


def test_the_generator_runs_as_documented() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gossiplearn.peer.config", "--reference"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == config_reference()


def test_every_key_of_the_written_file_is_in_the_reference_with_its_default() -> None:
    reference = config_reference()
    defaults = PeerConfig()
    for section in dataclasses.fields(defaults):
        assert f"\n## [{section.name}]\n" in reference
        for item in dataclasses.fields(getattr(defaults, section.name)):
            assert f"| `{section.name}.{item.name}` |" in reference, item.name
    # The written file and the page document the same keys, from the same text.
    written = render_config(defaults)
    assert "# k: invite up to k-1 live neighbours; groups are 3..k members.\ngroup_size = 4" in (
        written
    )
    assert "| `round.group_size` | integer | `4` | k: invite up to k-1 live neighbours" in reference


def test_training_holds_every_train_config_field_under_its_name_and_default() -> None:
    from gossiplearn.peer.learning.trainer import TrainConfig

    section = TrainingSection()
    train_defaults = TrainConfig()
    for item in train_config_fields(TrainConfig):
        assert hasattr(section, item.name), f"TrainConfig.{item.name} has no [training] key"
        assert getattr(section, item.name) == getattr(train_defaults, item.name), item.name
    # Every value of the section reaches the trainer, and privacy comes from [privacy].
    config = parse_config(
        "[training]\nepochs = 3\nsteps_per_round = 7\nbatch_size = 8\nlr = 0.5\nmomentum = 0.5\n"
        'head_epochs = 2\nseed = 9\ndevice = "auto"\n[privacy]\nenabled = true\n'
    )
    built = config.train_config()
    assert (built.epochs, built.steps_per_round, built.batch_size, built.lr) == (3, 7, 8, 0.5)
    assert (built.momentum, built.head_epochs, built.seed, built.device) == (0.5, 2, 9, "auto")
    assert built.privacy is not None and built.privacy.epsilon == config.privacy.epsilon
    assert PeerConfig().train_config().privacy is None


def test_memory_mode_and_the_daemon_build_the_same_round_config() -> None:
    from gossiplearn.sim.config import SimConfig, round_section, train_config, training_section

    sim = SimConfig(group_size=6, max_weight=50, epochs=2, steps_per_round=5, lr=0.1, seed=3)
    section = round_section(sim)
    assert section == RoundSection(group_size=6, max_weight=50, interval_s=sim.interval_s)
    round_config = section.to_round_config()
    assert round_config.max_group_size == 6 and round_config.max_weight == 50
    # What a daemon that `gossiplearn sim --mode process` writes would read back.
    daemon = PeerConfig(round=section, training=training_section(sim))
    reread = parse_config(render_config(daemon))
    assert reread.round.to_round_config() == round_config
    assert reread.train_config() == train_config(sim)
