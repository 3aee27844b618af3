"""Checkpoints: one atomic safetensors file, verified on load, never pickle."""

import json
import os
import pickle
import stat
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from gossiplearn.peer.learning.architectures import mlp
from gossiplearn.peer.learning.checkpoint import (
    CheckpointError,
    CheckpointMeta,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)
from gossiplearn.peer.learning.split_model import SplitModel
from tests.peer.learning.test_split_model import seeded

MODEL_FILE = "model.safetensors"


@pytest.fixture
def saved(tmp_path):
    """A checkpoint directory holding a saved model, with the model and its meta."""
    model = SplitModel(seeded(mlp, 1))
    meta = CheckpointMeta(rounds_completed=3, rounds_aborted=1, metrics={"accuracy": 0.9})
    save_checkpoint(tmp_path / "ckpt", model, meta)
    return tmp_path / "ckpt", model, meta


def fresh_model() -> SplitModel:
    return SplitModel(seeded(mlp, 2))


def rewrite(path, tensors=None, metadata=None):
    """Re-save a checkpoint file with some tensors or metadata replaced."""
    with safe_open(path, framework="pt") as reader:
        old_tensors = {name: reader.get_tensor(name).clone() for name in reader.keys()}  # noqa: SIM118
        old_metadata = reader.metadata()
    save_file(tensors or old_tensors, path, metadata=metadata or old_metadata)


def test_absent_checkpoint_loads_as_none(tmp_path):
    assert load_checkpoint(tmp_path, fresh_model()) is None


def test_round_trip_restores_weights_and_meta(saved):
    directory, model, meta = saved
    assert meta.model_digest == model.model_digest()
    assert meta.backbone_digest == model.backbone_digest()
    assert meta.head_digest == model.head_digest()
    assert meta.schema_hash == model.schema_hash.hex()
    assert meta.saved_at > 0

    restored = fresh_model()
    assert restored.model_digest() != model.model_digest()
    loaded = load_checkpoint(directory, restored)
    assert loaded == meta
    assert restored.model_digest() == model.model_digest()
    assert restored.head_digest() == model.head_digest()
    assert restored.get_backbone().tobytes() == model.get_backbone().tobytes()


def test_metadata_reads_without_a_model(saved, tmp_path):
    directory, model, meta = saved
    assert read_checkpoint_meta(directory) == meta
    assert read_checkpoint_meta(tmp_path / "nowhere") is None
    (directory / MODEL_FILE).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError):
        read_checkpoint_meta(directory)


def test_files_are_private_and_no_temp_files_remain(saved):
    directory, _, meta = saved
    assert sorted(os.listdir(directory)) == ["model.json", MODEL_FILE]
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in os.listdir(directory):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600


def test_sidecar_is_readable_json_but_not_authoritative(saved):
    directory, _, meta = saved
    sidecar = json.loads((directory / "model.json").read_text())
    assert sidecar["rounds_completed"] == 3
    assert sidecar["model_digest"] == meta.model_digest

    sidecar["rounds_completed"] = 99
    (directory / "model.json").write_text(json.dumps(sidecar))
    assert load_checkpoint(directory, fresh_model()).rounds_completed == 3


def test_file_is_safetensors_not_pickle(saved):
    directory, _, _ = saved
    raw = (directory / MODEL_FILE).read_bytes()
    (header_length,) = struct.unpack("<Q", raw[:8])
    assert raw[8:9] == b"{"
    header = json.loads(raw[8 : 8 + header_length])
    assert "gossiplearn" in header["__metadata__"]


def test_save_and_load_never_use_pickle(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used")

    for module, name in [
        (torch, "save"),
        (torch, "load"),
        (pickle, "dump"),
        (pickle, "dumps"),
        (pickle, "load"),
        (pickle, "loads"),
    ]:
        monkeypatch.setattr(module, name, forbidden)
    save_checkpoint(tmp_path, fresh_model(), CheckpointMeta())
    assert load_checkpoint(tmp_path, fresh_model()) is not None


def test_leftover_temp_files_from_a_crash_are_harmless(saved):
    directory, model, _ = saved
    leftovers = [directory / ".model.safetensors.crash1.tmp", directory / ".model.json.crash2.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"half a checkpoint")
    assert load_checkpoint(directory, fresh_model()) is not None
    save_checkpoint(directory, model, CheckpointMeta(rounds_completed=4))
    assert sorted(os.listdir(directory)) == ["model.json", MODEL_FILE]
    assert load_checkpoint(directory, fresh_model()).rounds_completed == 4


def test_resave_replaces_the_checkpoint(saved):
    directory, model, _ = saved
    model.set_backbone(model.get_backbone() * 2)
    save_checkpoint(directory, model, CheckpointMeta(rounds_completed=5))
    restored = fresh_model()
    assert load_checkpoint(directory, restored).rounds_completed == 5
    assert restored.model_digest() == model.model_digest()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated"),
        pytest.param(lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), id="bit-flip"),
        pytest.param(lambda raw: b"\xff" * 8 + raw[8:], id="bad-header-length"),
        pytest.param(lambda raw: b"", id="empty"),
    ],
)
def test_corrupt_file_is_an_error_and_leaves_the_model_alone(saved, damage):
    directory, _, _ = saved
    path = directory / MODEL_FILE
    path.write_bytes(damage(path.read_bytes()))
    model = fresh_model()
    before = model.model_digest()
    with pytest.raises(CheckpointError):
        load_checkpoint(directory, model)
    assert model.model_digest() == before


def test_schema_mismatch_names_the_tensor(saved):
    directory, _, _ = saved
    with pytest.raises(CheckpointError, match=r"backbone\.2\.bias.*shape \(64,\).*\(32,\)"):
        load_checkpoint(directory, SplitModel(mlp(hidden=(64, 32))))
    with pytest.raises(CheckpointError, match=r"backbone\.4\.bias.*missing"):
        load_checkpoint(directory, SplitModel(mlp(hidden=(64, 64, 64))))


def test_dtype_mismatch_is_an_error(saved):
    directory, _, _ = saved
    path = directory / MODEL_FILE
    with safe_open(path, framework="pt") as reader:
        tensors = {name: reader.get_tensor(name).clone() for name in reader.keys()}  # noqa: SIM118
    tensors["head.bias"] = tensors["head.bias"].double()
    rewrite(path, tensors=tensors)
    with pytest.raises(CheckpointError, match=r"head\.bias.*dtype"):
        load_checkpoint(directory, fresh_model())


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"other": "x"}, "no 'gossiplearn' metadata"),
        ({"gossiplearn": "{not json"}, "not valid JSON"),
        ({"gossiplearn": json.dumps({"version": 2})}, "version 2 is not supported"),
    ],
)
def test_bad_metadata_is_an_error(saved, metadata, message):
    directory, _, _ = saved
    rewrite(directory / MODEL_FILE, metadata=metadata)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(directory, fresh_model())


def test_tied_weights_round_trip(tmp_path):
    def build():
        layer = nn.Linear(8, 8)
        backbone = nn.Sequential(layer, nn.ReLU(), layer)  # one Linear used twice
        return nn.ModuleDict({"backbone": backbone, "head": nn.Linear(8, 2)})

    model = SplitModel(seeded(build, 1))
    save_checkpoint(tmp_path, model, CheckpointMeta())
    restored = SplitModel(seeded(build, 2))
    load_checkpoint(tmp_path, restored)
    assert restored.model_digest() == model.model_digest()
