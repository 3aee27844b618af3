"""The personalized model: a torch module split into a shared backbone and a personal head.

Only the backbone is ever averaged with other peers; the head never leaves the peer. The split
is named either by a ``backbone``/``head`` attribute pair on the module or by a list of head
name prefixes. BatchNorm running statistics stay local unless sharing them is asked for.

The shared tensors travel as one flat float32 vector in a fixed order (sorted by name), and
peers check they agree on its layout through :attr:`SplitModel.schema_hash` before averaging.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch.nn.modules.batchnorm import _NormBase

# BLAKE2b personalization strings keep a schema hash from ever equalling a content digest.
_SCHEMA_PERSON = b"gl-schema-v1"
_DIGEST_PERSON = b"gl-digest-v1"
_SHARED_STAT_BUFFERS = ("running_mean", "running_var")
_ATTRIBUTE_PREFIXES = {"backbone": "backbone.", "head": "head."}


class SplitModelError(ValueError):
    """The module cannot be split as asked, or a backbone vector does not fit it."""


def _length_prefixed(data: bytes) -> bytes:
    return len(data).to_bytes(8, "little") + data


def _tensor_header(name: str, tensor: torch.Tensor) -> bytes:
    """Canonical bytes for a tensor's name, dtype and shape (unambiguous concatenation)."""
    shape = b"".join(int(dim).to_bytes(8, "little") for dim in tensor.shape)
    return (
        _length_prefixed(name.encode())
        + _length_prefixed(str(tensor.dtype).encode())
        + _length_prefixed(shape)
    )


def _tensor_bytes(tensor: torch.Tensor) -> np.ndarray:
    """The raw bytes of a tensor as a uint8 array (reshape first: 0-d tensors cannot be viewed)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy()


def schema_hash_of(tensors: Iterable[tuple[str, torch.Tensor]]) -> bytes:
    """32-byte BLAKE2b over the (name, shape, dtype) of ``tensors``, in the order given."""
    hasher = hashlib.blake2b(digest_size=32, person=_SCHEMA_PERSON)
    for name, tensor in tensors:
        hasher.update(_tensor_header(name, tensor))
    return hasher.digest()


def digest_of(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Hex BLAKE2b-256 over names, dtypes, shapes and contents of ``tensors``, in order."""
    hasher = hashlib.blake2b(digest_size=32, person=_DIGEST_PERSON)
    for name, tensor in tensors:
        hasher.update(_tensor_header(name, tensor))
        data = _tensor_bytes(tensor)
        hasher.update(data.size.to_bytes(8, "little"))
        hasher.update(data.data)
    return hasher.hexdigest()


class SplitModel:
    """Wraps a torch module; names which parameters are the shared backbone and which the head.

    Without ``head_prefixes`` the module must have ``backbone`` and ``head`` submodules and
    every parameter must live under one of them. With ``head_prefixes`` a parameter whose name
    starts with one of the prefixes (plain string prefix: end it with ``.`` to mean a whole
    submodule) is head, every other one is backbone. Local buffers (BatchNorm statistics unless
    ``share_batchnorm_stats``) are neither: they stay on the peer and only count in
    :meth:`model_digest`.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        head_prefixes: Sequence[str] | None = None,
        share_batchnorm_stats: bool = False,
    ) -> None:
        self.module = module
        self._attribute_split = head_prefixes is None
        self._head_prefixes = self._check_prefixes(module, head_prefixes)
        backbone: list[str] = []
        head: list[str] = []
        unplaced: list[str] = []
        for name, _ in module.named_parameters():
            if self.is_head(name):
                head.append(name)
            elif self._is_backbone(name):
                backbone.append(name)
            else:
                unplaced.append(name)
        if unplaced:
            raise SplitModelError(
                "parameters outside both `backbone` and `head`: "
                f"{', '.join(unplaced[:5])}{' ...' if len(unplaced) > 5 else ''}; "
                "move them into one of the two submodules or pass head_prefixes"
            )
        if not backbone:
            raise SplitModelError("the split leaves the backbone empty: nothing would be shared")
        if not head:
            raise SplitModelError("the split leaves the head empty: nothing would be personal")
        if share_batchnorm_stats:
            backbone.extend(self._backbone_stat_buffers())

        self.backbone_names: tuple[str, ...] = tuple(sorted(backbone))
        self.head_names: tuple[str, ...] = tuple(sorted(head))
        shared = self._named(self.backbone_names)
        wrong_dtype = [name for name, tensor in shared if tensor.dtype != torch.float32]
        if wrong_dtype:
            raise SplitModelError(
                f"shared tensors must be float32 (the wire format), not: {', '.join(wrong_dtype)}"
            )
        self.backbone_size: int = sum(tensor.numel() for _, tensor in shared)
        self.schema_hash: bytes = schema_hash_of(shared)

    @staticmethod
    def _check_prefixes(
        module: torch.nn.Module, head_prefixes: Sequence[str] | None
    ) -> tuple[str, ...]:
        if head_prefixes is None:
            for attribute in _ATTRIBUTE_PREFIXES:
                if not isinstance(getattr(module, attribute, None), torch.nn.Module):
                    raise SplitModelError(
                        f"{type(module).__name__} has no `{attribute}` submodule; give it "
                        "`backbone` and `head` attributes or pass head_prefixes"
                    )
            return (_ATTRIBUTE_PREFIXES["head"],)
        if isinstance(head_prefixes, str):
            # A bare string would silently be read as a sequence of one-character prefixes.
            raise SplitModelError("head_prefixes must be a sequence of strings, not one string")
        prefixes = tuple(head_prefixes)
        names = [name for name, _ in module.named_parameters()]
        for prefix in prefixes:
            if not any(name.startswith(prefix) for name in names):
                raise SplitModelError(f"head prefix {prefix!r} matches no parameter")
        return prefixes

    def _backbone_stat_buffers(self) -> list[str]:
        """Float running statistics of the backbone's normalization layers."""
        names = []
        for module_name, submodule in self.module.named_modules():
            if not isinstance(submodule, _NormBase) or not submodule.track_running_stats:
                continue
            for buffer_name in _SHARED_STAT_BUFFERS:
                full_name = f"{module_name}.{buffer_name}" if module_name else buffer_name
                buffer = submodule._buffers.get(buffer_name)
                if (
                    buffer is not None
                    and buffer.is_floating_point()
                    and self._is_backbone(full_name)
                ):
                    names.append(full_name)
        return names

    def is_head(self, name: str) -> bool:
        """Whether the tensor called ``name`` (a state_dict key) belongs to the personal head."""
        return name.startswith(self._head_prefixes)

    def _is_backbone(self, name: str) -> bool:
        if self._attribute_split:
            return name.startswith(_ATTRIBUTE_PREFIXES["backbone"])
        return not self.is_head(name)

    def _named(self, names: Iterable[str]) -> list[tuple[str, torch.Tensor]]:
        # Looked up on every call: module.to() swaps buffer objects, so references go stale.
        tensors: dict[str, torch.Tensor] = dict(self.module.named_parameters())
        tensors.update(self.module.named_buffers())
        return [(name, tensors[name]) for name in names]

    def get_backbone(self) -> np.ndarray:
        """A float32 1-D copy of the shared tensors, concatenated in :attr:`backbone_names` order."""
        with torch.no_grad():
            flat = [tensor.detach().reshape(-1) for _, tensor in self._named(self.backbone_names)]
            return torch.cat(flat).to("cpu").numpy()

    def set_backbone(self, vector: np.ndarray, mix: float = 1.0) -> None:
        """Set the shared tensors to ``(1 - mix) * current + mix * vector``.

        With ``mix == 1.0`` the tensors become bit-exactly the vector's values. The vector is
        checked (length, finiteness) before anything is written, so a bad one changes nothing.
        """
        if not 0.0 < mix <= 1.0:
            raise SplitModelError(f"mix must be in (0, 1], got {mix}")
        values = np.ascontiguousarray(vector, dtype=np.float32)
        if values.ndim != 1 or values.size != self.backbone_size:
            raise SplitModelError(
                f"backbone vector has shape {values.shape}, expected ({self.backbone_size},)"
            )
        if not np.isfinite(values).all():
            raise SplitModelError("backbone vector contains NaN or infinite values")
        if not values.flags.writeable:
            values = values.copy()  # torch.from_numpy warns on read-only arrays
        source = torch.from_numpy(values)
        offset = 0
        with torch.no_grad():
            for _, tensor in self._named(self.backbone_names):
                chunk = source[offset : offset + tensor.numel()].view(tensor.shape)
                offset += tensor.numel()
                if mix == 1.0:
                    tensor.copy_(chunk)
                else:
                    tensor.lerp_(chunk.to(tensor.device), mix)

    def backbone_parameters(self) -> list[torch.nn.Parameter]:
        """The backbone's trainable parameters (shared statistics buffers excluded)."""
        parameters = dict(self.module.named_parameters())
        return [parameters[name] for name in self.backbone_names if name in parameters]

    def head_parameters(self) -> list[torch.nn.Parameter]:
        parameters = dict(self.module.named_parameters())
        return [parameters[name] for name in self.head_names]

    def backbone_digest(self) -> str:
        return digest_of(self._named(self.backbone_names))

    def head_digest(self) -> str:
        return digest_of(self._named(self.head_names))

    def model_digest(self) -> str:
        """Digest of the whole state_dict, local buffers included, in sorted key order."""
        return digest_of(sorted(self.module.state_dict().items()))
