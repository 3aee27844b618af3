"""A user's models, data and trainers for tests: a regression (MSE) and a multi-label
classification (binary cross-entropy per label), each with its own Adam trainer implementing
gossiplearn's TrainerProtocol, named in config as ``tests.peer.learning.user_parts:...``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from gossiplearn import PeerData, SplitModel, TrainConfig

FEATURES = 8
LABELS = 4


class Net(nn.Module):
    def __init__(self, outputs: int) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(FEATURES, 32), nn.Tanh())
        self.head = nn.Linear(32, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def regression_model() -> nn.Module:
    return Net(1)


def multilabel_model() -> nn.Module:
    return Net(LABELS)


def _inputs(rng: np.random.Generator, shift: float, n: int) -> np.ndarray:
    return rng.normal(shift, 1.0, size=(n, FEATURES))


def regression_data(shard: int, shards: int, rows: int = 80) -> tuple[Dataset, ...]:
    """(train, validation, test): one nonlinear signal, each shard's inputs shifted."""
    rng = np.random.default_rng([7, shard])
    shift = 0.3 * (shard - (shards - 1) / 2)

    def sample(n: int) -> Dataset:
        x = _inputs(rng, shift, n)
        y = np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] * x[:, 2] + rng.normal(0, 0.1, n)
        return TensorDataset(
            torch.tensor(x, dtype=torch.float32), torch.tensor(y[:, None], dtype=torch.float32)
        )

    return sample(rows), sample(40), sample(200)


def multilabel_data(shard: int, shards: int, rows: int = 120) -> tuple[Dataset, ...]:
    """(train, validation, test): 4 labels, each a threshold of a different feature mix."""
    rng = np.random.default_rng([8, shard])
    mix = np.random.default_rng(99).normal(size=(FEATURES, LABELS))
    shift = 0.3 * (shard - (shards - 1) / 2)

    def sample(n: int) -> Dataset:
        x = _inputs(rng, shift, n)
        y = (np.tanh(x) @ mix > 0).astype(np.float32)
        return TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y))

    return sample(rows), sample(40), sample(200)


class _AdamTrainer:
    """The shared part: Adam, ``steps_per_round`` batches a round, a loss per sample."""

    def __init__(
        self, model: SplitModel, data: PeerData, config: TrainConfig, lr: float = 0.01
    ) -> None:
        self.model = model
        self.data = data
        self.config = config
        self.num_train_samples = len(data.train)  # type: ignore[arg-type]
        self.optimizer = torch.optim.Adam(model.module.parameters(), lr=lr)
        self.head_optimizer = torch.optim.Adam(model.head_parameters(), lr=lr)
        self._batches = self._forever()

    def _forever(self) -> Any:
        generator = torch.Generator().manual_seed(self.config.seed)
        while True:
            yield from DataLoader(
                self.data.train,
                batch_size=self.config.batch_size,
                shuffle=True,
                generator=generator,
            )

    def _steps(self, optimizer: torch.optim.Optimizer, steps: int) -> dict[str, float]:
        self.model.module.train()
        total = 0.0
        for _ in range(steps):
            x, y = next(self._batches)
            loss = self.per_sample(self.model.module(x), y).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        return {"loss": total / max(steps, 1)}

    def train_round(self) -> dict[str, float]:
        return self._steps(self.optimizer, self.config.steps_per_round or 10)

    def finetune_head(self) -> dict[str, float]:
        return self._steps(self.head_optimizer, 5)

    @torch.no_grad()
    def _outputs(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.module.eval()
        dataset = self.data.validation if split == "validation" else self.data.test
        x, y = dataset.tensors  # type: ignore[attr-defined]
        return self.model.module(x), y

    def per_sample(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class RegressionTrainer(_AdamTrainer):
    def per_sample(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((output - target) ** 2).squeeze(-1)

    def evaluate(self, split: str = "test") -> dict[str, float]:
        output, target = self._outputs(split)
        mse = float(self.per_sample(output, target).mean())
        return {"mse": mse, "accuracy": -mse}

    def losses(self, split: str, metric: str) -> np.ndarray:
        if metric not in ("mse", "loss"):
            raise KeyError(metric)
        return self.per_sample(*self._outputs(split)).numpy()


class MultiLabelTrainer(_AdamTrainer):
    def per_sample(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(
            output, target, reduction="none"
        ).mean(-1)

    def evaluate(self, split: str = "test") -> dict[str, float]:
        output, target = self._outputs(split)
        label_accuracy = float(((output > 0).float() == target).float().mean())
        return {
            "label_accuracy": label_accuracy,
            "accuracy": label_accuracy,
            "label_error": 1 - label_accuracy,
            "bce": float(self.per_sample(output, target).mean()),
        }
