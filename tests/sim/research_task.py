"""A task the simulator has never seen, as a researcher brings it to ``gossiplearn sim``:
next-character prediction, one speaking role per peer, an LSTM backbone, and data and a
trainer that take options (``--data-option``, ``--trainer-option``).

Each role speaks a dialect of one small alphabet: a Markov chain whose transitions are mostly
shared (what the LSTM backbone can learn from everyone) and partly the role's own (what its
head learns). The trainer (Adam, cross-entropy on every position) is told its peer index, and
for the tests it can stop at a given training call of peer 0 (``hold_at``): in Python
(``hold = "python"``, a signal is taken at once) or inside one C call (``hold = "c"``: the
main thread waits in libc's ``system()`` for a file, as a long torch call would keep it).
"""

from __future__ import annotations

import ctypes
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset

from gossiplearn import PeerData, SplitModel, TrainConfig

ALPHABET = 12

#: Training calls of peer 0 in this process, over every method (the hold counts them).
_CALLS = itertools.count(1)


class Backbone(nn.Module):
    def __init__(self, embedding: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(ALPHABET, embedding)
        self.lstm = nn.LSTM(embedding, hidden, batch_first=True)

    def forward(self, characters: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(self.embed(characters))
        return states


class NextCharacter(nn.Module):
    def __init__(self, embedding: int, hidden: int) -> None:
        super().__init__()
        self.backbone = Backbone(embedding, hidden)
        self.head = nn.Linear(hidden, ALPHABET)

    def forward(self, characters: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(characters))


def model(embedding: int = 8, hidden: int = 16) -> nn.Module:
    """``--model`` (``--model-option hidden=16``)."""
    return NextCharacter(embedding, hidden)


def _chain(rng: np.random.Generator) -> np.ndarray:
    matrix = np.exp(rng.gumbel(size=(ALPHABET, ALPHABET)) * 2.0)
    return matrix / matrix.sum(axis=1, keepdims=True)


def data(
    peer: int, peers: int, lines: int = 30, length: int = 12, shared: float = 0.7, seed: int = 0
) -> tuple[Dataset, Dataset]:
    """``--data``: role ``peer``'s (train, test) lines; a sample is (characters, next
    characters). Options: ``lines`` of training data, ``length``, ``shared``, ``seed``."""
    if not 0 <= peer < peers:
        raise ValueError(f"peer {peer} of {peers}")
    chain = shared * _chain(np.random.default_rng([seed, 1])) + (1 - shared) * _chain(
        np.random.default_rng([seed, 2, peer])
    )
    rng = np.random.default_rng([seed, 3, peer])

    def dataset(count: int) -> Dataset:
        text = np.empty((count, length + 1), dtype=np.int64)
        text[:, 0] = rng.integers(ALPHABET, size=count)
        for position in range(1, length + 1):
            cumulative = chain[text[:, position - 1]].cumsum(axis=1)
            text[:, position] = (rng.random((count, 1)) < cumulative).argmax(axis=1)
        tensor = torch.from_numpy(text)
        return TensorDataset(tensor[:, :-1], tensor[:, 1:])

    return dataset(lines), dataset(40)


class CharTrainer:
    """``--trainer``: Adam at ``lr``, ``steps`` batches a round (and as many for the head),
    next-character accuracy. ``peer``/``peers`` are given by the simulator."""

    def __init__(
        self,
        model: SplitModel,
        data: PeerData,
        config: TrainConfig,
        peer: int,
        peers: int,
        lr: float = 0.01,
        steps: int = 3,
        hold_at: int = 0,
        hold: str = "python",
        marker: str = "",
    ) -> None:
        if not 0 <= peer < peers:
            raise ValueError(f"told peer {peer} of {peers}")
        self.model, self.data, self.config = model, data, config
        self.peer, self.steps, self.lr = peer, steps, lr
        self.hold_at, self.hold, self.marker = hold_at, hold, marker
        self.num_train_samples = len(data.train)  # type: ignore[arg-type]
        self._generator = torch.Generator().manual_seed(config.seed * 1000 + peer)
        self._batches = self._forever()

    def _forever(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        inputs, targets = _stack(self.data.train)
        while True:
            order = torch.randperm(len(inputs), generator=self._generator)
            for batch in order.split(self.config.batch_size):
                yield inputs[batch], targets[batch]

    def _fit(self, parameters: list[torch.nn.Parameter]) -> dict[str, float]:
        optimizer = torch.optim.Adam(parameters, lr=self.lr)
        self.model.module.train()
        total = 0.0
        for inputs, targets in itertools.islice(self._batches, self.steps):
            loss = F.cross_entropy(
                self.model.module(inputs).reshape(-1, ALPHABET), targets.reshape(-1)
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        return {"loss": total / self.steps}

    def _maybe_hold(self) -> None:
        if self.peer != 0 or next(_CALLS) != self.hold_at:
            return
        Path(self.marker).write_text("held\n")
        if self.hold == "c":
            release = f"{self.marker}.release"
            # The shell outlives a process ended meanwhile: off its stdout and stderr, which
            # would keep the caller's pipes open.
            wait = (
                f"exec >/dev/null 2>&1 </dev/null; while [ ! -e '{release}' ]; do sleep 0.05; done"
            )
            ctypes.CDLL(None).system(wait.encode())
        else:
            while True:  # a signal's handler runs between these calls
                time.sleep(0.02)

    def train_round(self) -> dict[str, float]:
        self._maybe_hold()
        return self._fit(list(self.model.module.parameters()))

    def finetune_head(self) -> dict[str, float]:
        backbone = self.model.backbone_parameters()
        for parameter in backbone:
            parameter.requires_grad_(False)
        try:
            return self._fit(self.model.head_parameters())
        finally:
            for parameter in backbone:
                parameter.requires_grad_(True)

    @torch.no_grad()
    def evaluate(self, split: str = "test") -> dict[str, float]:
        inputs, targets = _stack(self.data.validation if split == "validation" else self.data.test)
        self.model.module.eval()
        logits = self.model.module(inputs)
        loss = F.cross_entropy(logits.reshape(-1, ALPHABET), targets.reshape(-1))
        accuracy = float((logits.argmax(-1) == targets).float().mean())
        return {"accuracy": accuracy, "error": 1 - accuracy, "loss": float(loss)}


def _stack(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    samples = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])
