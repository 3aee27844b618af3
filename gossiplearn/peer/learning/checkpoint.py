"""Checkpoints: the whole model and its metadata in one safetensors file, written atomically.

``model.safetensors`` holds the full state_dict (head and local buffers included) and, in its
header metadata under ``"gossiplearn"``, the :class:`CheckpointMeta` as JSON, so model and
metadata can never disagree after a crash. ``model.json`` repeats the metadata for humans and
is never read back. No pickle anywhere: loading a checkpoint cannot run code.

Each file is written to a temporary file in the same directory, flushed and fsynced, then
renamed over the old one, and the directory is fsynced, so a crash leaves either the old or
the new checkpoint. Temporary files a crash leaves behind are removed by the next save. One
writer per directory is assumed (the daemon owns its directory).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from gossiplearn.fileio import TEMP_SUFFIX, temp_prefix, write_atomically
from gossiplearn.peer.learning.split_model import SplitModel, digest_of

MODEL_FILE = "model.safetensors"
SIDECAR_FILE = "model.json"
METADATA_KEY = "gossiplearn"
FORMAT_VERSION = 1
# Checkpoints hold a model trained on private data: readable by the owner only.
_FILE_MODE = 0o600
_DIRECTORY_MODE = 0o700


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable, corrupt, or does not fit the model."""


@dataclass
class CheckpointMeta:
    """What a checkpoint records besides the tensors."""

    rounds_completed: int = 0
    rounds_aborted: int = 0
    model_digest: str = ""
    backbone_digest: str = ""
    head_digest: str = ""
    schema_hash: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    saved_at: float = 0.0
    version: int = FORMAT_VERSION


def _remove_stale_temp_files(directory: Path) -> None:
    for name in (MODEL_FILE, SIDECAR_FILE):
        for stale in directory.glob(f"{temp_prefix(name)}*{TEMP_SUFFIX}"):
            stale.unlink(missing_ok=True)


def _tensors_for_saving(model: SplitModel) -> dict[str, torch.Tensor]:
    """The state_dict on CPU, contiguous, with no two tensors sharing storage.

    safetensors refuses tensors that share memory (tied weights, views), so every tensor whose
    storage was already seen is cloned.
    """
    tensors: dict[str, torch.Tensor] = {}
    seen_storages: set[int] = set()
    for name, tensor in model.module.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen_storages:
            tensor = tensor.clone()
        seen_storages.add(tensor.untyped_storage().data_ptr())
        tensors[name] = tensor
    return tensors


def _meta_json(meta: CheckpointMeta) -> str:
    return json.dumps(asdict(meta), sort_keys=True, indent=2)


def save_checkpoint(directory: Path, model: SplitModel, meta: CheckpointMeta) -> Path:
    """Save ``model`` and ``meta`` (its digests, schema hash and time filled in here).

    Returns the path of the model file.
    """
    directory = Path(directory)
    directory.mkdir(mode=_DIRECTORY_MODE, parents=True, exist_ok=True)
    _remove_stale_temp_files(directory)

    meta.model_digest = model.model_digest()
    meta.backbone_digest = model.backbone_digest()
    meta.head_digest = model.head_digest()
    meta.schema_hash = model.schema_hash.hex()
    meta.saved_at = time.time()
    meta.version = FORMAT_VERSION
    meta_json = _meta_json(meta)
    tensors = _tensors_for_saving(model)

    model_path = directory / MODEL_FILE
    write_atomically(
        model_path,
        lambda temp: save_file(tensors, temp, metadata={METADATA_KEY: meta_json}),
        _FILE_MODE,
    )
    write_atomically(
        directory / SIDECAR_FILE, lambda temp: temp.write_text(meta_json + "\n"), _FILE_MODE
    )
    return model_path


def _parse_meta(header: Mapping[str, str] | None) -> CheckpointMeta:
    if not header or METADATA_KEY not in header:
        raise CheckpointError(f"checkpoint has no {METADATA_KEY!r} metadata")
    try:
        raw = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint metadata is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise CheckpointError("checkpoint metadata is not a JSON object")
    version = raw.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format version {version!r} is not supported (this build reads up to "
            f"{FORMAT_VERSION})"
        )
    known = {f.name for f in fields(CheckpointMeta)}
    try:
        return CheckpointMeta(**{key: value for key, value in raw.items() if key in known})
    except TypeError as exc:
        raise CheckpointError(f"checkpoint metadata is malformed: {exc}") from exc


def _first_schema_mismatch(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]
) -> str | None:
    for name in sorted(expected.keys() | found.keys()):
        if name not in found:
            return f"tensor {name!r} is missing from the checkpoint"
        if name not in expected:
            return f"checkpoint has tensor {name!r} which the model does not"
        want, got = expected[name], found[name]
        if want.shape != got.shape:
            return (
                f"tensor {name!r} has shape {tuple(got.shape)}, model expects {tuple(want.shape)}"
            )
        if want.dtype != got.dtype:
            return f"tensor {name!r} has dtype {got.dtype}, model expects {want.dtype}"
    return None


def read_checkpoint_meta(directory: Path) -> CheckpointMeta | None:
    """The metadata of the checkpoint in ``directory`` (header only, no tensors); None if
    there is none. The tensors are not checked: :func:`load_checkpoint` does that."""
    path = Path(directory) / MODEL_FILE
    if not path.exists():
        return None
    try:
        with safe_open(path, framework="pt", device="cpu") as reader:
            return _parse_meta(reader.metadata())
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc


def load_checkpoint(directory: Path, model: SplitModel) -> CheckpointMeta | None:
    """Load the checkpoint in ``directory`` into ``model``; None if there is none.

    Everything is checked (format, schema, content digest) before the model is touched, so a
    CheckpointError leaves the model as it was.
    """
    path = Path(directory) / MODEL_FILE
    if not path.exists():
        return None
    try:
        with safe_open(path, framework="pt", device="cpu") as reader:
            meta = _parse_meta(reader.metadata())
            # Copies: get_tensor returns views of the mapped file, which must not change
            # between the digest check and the load.
            loaded = {name: reader.get_tensor(name).clone() for name in reader.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc

    mismatch = _first_schema_mismatch(model.module.state_dict(), loaded)
    if mismatch is not None:
        raise CheckpointError(f"checkpoint {path} does not fit the model: {mismatch}")
    if digest_of(sorted(loaded.items())) != meta.model_digest:
        raise CheckpointError(f"checkpoint {path} is corrupt: its tensors do not match its digest")

    model.module.load_state_dict(loaded)
    if model.model_digest() != meta.model_digest:
        # Only reachable if the file holds tied tensors with different values.
        raise CheckpointError(f"checkpoint {path} loaded into a model with a different digest")
    return meta
