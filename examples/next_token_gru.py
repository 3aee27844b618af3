"""A GRU next-token model with a loss on every position, in ``gossiplearn sim``.

Each organization's sequences come from its own dialect of one small language: a Markov
chain over 16 tokens whose transitions are mostly shared (what the backbone, an embedding and
a GRU, can learn from everyone) and partly the organization's own (what its head learns).
The trainer predicts every next token of every sequence (cross-entropy on all positions) and
reports next-token accuracy; gossiplearn and the baselines all train through it.

    gossiplearn sim --peers 4 --rounds 8 --mode memory \\
        --model next_token_gru:model \\
        --data next_token_gru:data \\
        --trainer next_token_gru:NextTokenTrainer

(from the repository's root, so that ``examples`` is importable; ``--mode process`` runs
real daemons.)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset

from gossiplearn import PeerData, SplitModel, TrainConfig

VOCABULARY = 16
LENGTH = 24
SHARED = 0.75  # how much of each dialect's transitions is the common language


class Backbone(nn.Module):
    def __init__(self, embedding: int = 16, hidden: int = 48) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCABULARY, embedding)
        self.gru = nn.GRU(embedding, hidden, batch_first=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(self.embed(tokens))
        return states  # (batch, positions, hidden)


class NextToken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.head = nn.Linear(48, VOCABULARY)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(tokens))  # logits at every position


def model() -> nn.Module:
    """``--model``: a fresh model (called under the run's seed)."""
    return NextToken()


def _transitions(rng: np.random.Generator) -> np.ndarray:
    # Peaked rows: a few likely successors per token, so there is something to learn.
    logits = rng.gumbel(size=(VOCABULARY, VOCABULARY)) * 2.0
    matrix = np.exp(logits)
    return matrix / matrix.sum(axis=1, keepdims=True)


def _sequences(chain: np.ndarray, count: int, rng: np.random.Generator) -> torch.Tensor:
    tokens = np.empty((count, LENGTH + 1), dtype=np.int64)
    tokens[:, 0] = rng.integers(VOCABULARY, size=count)
    for position in range(1, LENGTH + 1):
        cumulative = chain[tokens[:, position - 1]].cumsum(axis=1)
        tokens[:, position] = (rng.random((count, 1)) < cumulative).argmax(axis=1)
    return torch.from_numpy(tokens)


def data(peer: int, peers: int, train: int = 40, test: int = 200) -> tuple[Dataset, Dataset]:
    """``--data``: peer ``peer``'s (train, test) sequences; samples are (tokens, next tokens)."""
    common = _transitions(np.random.default_rng(1234))
    own = _transitions(np.random.default_rng([1234, peer]))
    chain = SHARED * common + (1 - SHARED) * own
    rng = np.random.default_rng([99, peer])

    def dataset(count: int) -> Dataset:
        tokens = _sequences(chain, count, rng)
        return TensorDataset(tokens[:, :-1], tokens[:, 1:])

    return dataset(train), dataset(test)


class NextTokenTrainer:
    """``--trainer``: Adam, cross-entropy over every position, next-token accuracy.

    Implements gossiplearn.TrainerProtocol: built as ``NextTokenTrainer(model, data, config)``.
    """

    def __init__(self, model: SplitModel, data: PeerData, config: TrainConfig) -> None:
        self.model = model
        self.data = data
        self.config = config
        self.num_train_samples = len(data.train)  # type: ignore[arg-type]
        self._generator = torch.Generator().manual_seed(config.seed)
        self._optimizer = torch.optim.Adam(model.module.parameters(), lr=3e-3)
        self._batches = self._forever()

    def _forever(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        inputs, targets = _stack(self.data.train)
        while True:
            order = torch.randperm(len(inputs), generator=self._generator)
            for batch in order.split(self.config.batch_size):
                yield inputs[batch], targets[batch]

    def _loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.model.module(inputs)
        return F.cross_entropy(logits.reshape(-1, VOCABULARY), targets.reshape(-1))

    def _fit(self, optimizer: torch.optim.Optimizer, steps: int) -> dict[str, float]:
        self.model.module.train()
        total = 0.0
        for inputs, targets in itertools.islice(self._batches, steps):
            loss = self._loss(inputs, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        return {"loss": total / max(steps, 1)}

    def _steps(self) -> int:
        per_epoch = -(-self.num_train_samples // self.config.batch_size)
        return self.config.steps_per_round or self.config.epochs * per_epoch

    def train_round(self) -> dict[str, float]:
        return self._fit(self._optimizer, self._steps())

    def finetune_head(self) -> dict[str, float]:
        head = torch.optim.Adam(self.model.head_parameters(), lr=3e-3)
        backbone = self.model.backbone_parameters()
        for parameter in backbone:
            parameter.requires_grad_(False)
        try:
            return self._fit(head, self._steps())
        finally:
            for parameter in backbone:
                parameter.requires_grad_(True)

    @torch.no_grad()
    def evaluate(self, split: str = "test") -> dict[str, float]:
        dataset = self.data.validation if split == "validation" else self.data.test
        inputs, targets = _stack(dataset)
        self.model.module.eval()
        logits = self.model.module(inputs)
        loss = F.cross_entropy(logits.reshape(-1, VOCABULARY), targets.reshape(-1))
        accuracy = (logits.argmax(-1) == targets).float().mean()
        return {"accuracy": float(accuracy), "error": 1 - float(accuracy), "loss": float(loss)}


def _stack(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All (tokens, next tokens) of a dataset as two tensors (a few hundred sequences)."""
    samples = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])
