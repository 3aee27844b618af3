"""Local training of a :class:`SplitModel` on the peer's own data.

Three steps: train everything for one round's budget (before sharing the backbone), fine-tune
only the head (after an averaging round replaced the backbone), and evaluate: the loss on the
validation data (whether an average helps) and the accuracy on the test data (reported).

Deterministic by construction: each epoch's shuffle comes from a fresh ``torch.Generator``
seeded from ``(config.seed, epoch counter)``, and a fresh optimizer is made per call (momentum
from before an averaging round would point the wrong way after it). The daemon runs these
calls in a worker thread, so nothing here touches torch's global state (no set_num_threads,
no global seeding, no DataLoader worker processes or threads).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset, default_collate

from gossiplearn.peer.model import SplitModel

# Evaluation needs no gradients, so it can afford bigger batches than training.
_MIN_EVAL_BATCH = 256


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of local training (plain SGD with momentum, cross-entropy).

    One round's local budget is ``steps_per_round`` mini-batches if that is set (> 0; the
    batches run on through the shuffled epochs from one round to the next), else ``epochs``
    whole epochs.
    """

    epochs: int = 1
    steps_per_round: int = 0
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    head_epochs: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.head_epochs < 0 or self.steps_per_round < 0:
            raise ValueError("epochs, steps_per_round and head_epochs must be >= 0")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not self.lr > 0:
            raise ValueError("lr must be > 0")
        if not 0 <= self.momentum < 1:
            raise ValueError("momentum must be in [0, 1)")


def _batch(dataset: Dataset, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate the (input, label) samples at ``indices``."""
    if isinstance(dataset, TensorDataset):
        # Fancy indexing whole tensors is much faster than one __getitem__ per sample.
        inputs, labels = (tensor[indices] for tensor in dataset.tensors)
    else:
        inputs, labels = default_collate([dataset[int(i)] for i in indices])
    return inputs, labels


@contextmanager
def _frozen(parameters: Sequence[torch.nn.Parameter]) -> Iterator[None]:
    """Stop gradients through ``parameters`` for the duration, restoring the flags after."""
    previous = [parameter.requires_grad for parameter in parameters]
    try:
        for parameter in parameters:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in zip(parameters, previous, strict=True):
            parameter.requires_grad_(flag)


class Trainer:
    """Trains and evaluates one peer's :class:`SplitModel` on its own data."""

    def __init__(
        self,
        model: SplitModel,
        train_data: Dataset,
        val_data: Dataset,
        config: TrainConfig = TrainConfig(),
        test_data: Dataset | None = None,
    ) -> None:
        """``val_data`` decides whether an average helps (:meth:`validation_loss`);
        ``test_data`` (default: ``val_data``) is what :meth:`evaluate` reports on."""
        self.model = model
        self.train_data = train_data
        self.val_data = val_data
        self.test_data = val_data if test_data is None else test_data
        self.config = config
        self.num_train_samples: int = len(train_data)  # type: ignore[arg-type]
        if self.num_train_samples == 0 or not len(val_data) or not len(self.test_data):  # type: ignore[arg-type]
            raise ValueError("training, validation and test data must all be non-empty")
        self._epochs_run = 0
        self._stream: Iterator[torch.Tensor] | None = None

    @property
    def _device(self) -> torch.device:
        return next(self.model.module.parameters()).device

    def _shuffled_batches(self) -> Iterator[torch.Tensor]:
        """Index batches of one epoch; the order depends only on (seed, epoch counter)."""
        seed_sequence = np.random.SeedSequence([self.config.seed, self._epochs_run])
        self._epochs_run += 1
        generator = torch.Generator().manual_seed(int(seed_sequence.generate_state(1)[0]))
        order = torch.randperm(self.num_train_samples, generator=generator)
        return iter(order.split(self.config.batch_size))

    def _batches_forever(self) -> Iterator[torch.Tensor]:
        while True:
            yield from self._shuffled_batches()

    def _fit(
        self, parameters: Sequence[torch.nn.Parameter], batches: Iterable[torch.Tensor]
    ) -> dict[str, float]:
        """SGD on ``parameters`` over ``batches`` (index tensors); the mean per-sample loss."""
        optimizer = torch.optim.SGD(parameters, lr=self.config.lr, momentum=self.config.momentum)
        device = self._device
        total_loss, seen = 0.0, 0
        for indices in batches:
            inputs, labels = _batch(self.train_data, indices)
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.model.module(inputs), labels)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(labels)
            seen += len(labels)
        return {"loss": total_loss / seen if seen else math.nan}

    def _epochs(self, epochs: int) -> Iterator[torch.Tensor]:
        for _ in range(epochs):
            yield from self._shuffled_batches()

    def train_local(self) -> dict[str, float]:
        """Train all parameters (backbone and head) for one round's budget:
        ``config.steps_per_round`` mini-batches if set, else ``config.epochs`` epochs."""
        self.model.module.train()
        steps = self.config.steps_per_round
        if steps:
            if self._stream is None:
                self._stream = self._batches_forever()
            batches: Iterable[torch.Tensor] = itertools.islice(self._stream, steps)
        else:
            batches = self._epochs(self.config.epochs)
        return self._fit(list(self.model.module.parameters()), batches)

    def finetune_head(self) -> dict[str, float]:
        """Train only the head for ``config.head_epochs``; the backbone stays bit-identical.

        Modules holding no head tensor run in eval mode, so backbone BatchNorm statistics do
        not drift and backbone dropout does not perturb the features the head learns from.
        """
        module = self.model.module
        module.train()
        for module_name, submodule in module.named_modules():
            tensor_names = (
                f"{module_name}.{name}" if module_name else name
                for name, _ in chain(submodule.named_parameters(), submodule.named_buffers())
            )
            if not any(self.model.is_head(name) for name in tensor_names):
                submodule.eval()
        with _frozen(self.model.backbone_parameters()):
            return self._fit(self.model.head_parameters(), self._epochs(self.config.head_epochs))

    def evaluate(self) -> dict[str, float]:
        """Accuracy and mean loss on the test data (the reported figures)."""
        return self._measure(self.test_data)

    def validation_losses(self, metric: str = "error") -> np.ndarray:
        """Each validation sample's loss, by ``metric``: "error" (0 if classified right,
        else 1) or "cross_entropy". What decides whether an average helps."""
        losses, correct = self._per_sample(self.val_data)
        if metric == "error":
            return (~correct).astype(np.float64)
        if metric == "cross_entropy":
            return losses
        raise ValueError(f"unknown validation metric {metric!r}")

    def _measure(self, dataset: Dataset) -> dict[str, float]:
        losses, correct = self._per_sample(dataset)
        return {
            "accuracy": float(correct.mean()),
            "loss": float(losses.mean()),
            "samples": float(len(losses)),
        }

    @torch.no_grad()
    def _per_sample(self, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
        """(loss, correct) of each sample of ``dataset``, in order."""
        self.model.module.eval()
        device = self._device
        samples: int = len(dataset)  # type: ignore[arg-type]
        losses, correct = [], []
        for indices in torch.arange(samples).split(max(self.config.batch_size, _MIN_EVAL_BATCH)):
            inputs, labels = _batch(dataset, indices)
            inputs, labels = inputs.to(device), labels.to(device)
            logits = self.model.module(inputs)
            losses.append(F.cross_entropy(logits, labels, reduction="none").double().cpu())
            correct.append((logits.argmax(dim=1) == labels).cpu())
        return torch.cat(losses).numpy(), torch.cat(correct).numpy()
