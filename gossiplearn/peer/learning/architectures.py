"""Ready-made split architectures: modules with a ``backbone`` and a ``head`` submodule."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class BackboneHead(nn.Module):
    """``forward(x) = head(backbone(x))``: the layout :class:`SplitModel` splits by attribute."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def mlp(input_dim: int = 64, hidden: Sequence[int] = (64, 64), classes: int = 10) -> nn.Module:
    """A multilayer perceptron: Linear+ReLU layers as the backbone, one Linear as the head.

    Weights come from torch's global generator; seed it (or load a checkpoint) for
    reproducible initial weights.
    """
    if input_dim < 1 or classes < 2 or not hidden or any(width < 1 for width in hidden):
        raise ValueError("mlp needs input_dim >= 1, classes >= 2 and at least one hidden layer")
    layers: list[nn.Module] = []
    width_in = input_dim
    for width in hidden:
        layers += [nn.Linear(width_in, width), nn.ReLU()]
        width_in = width
    return BackboneHead(nn.Sequential(*layers), nn.Linear(width_in, classes))
