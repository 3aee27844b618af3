"""Tabular regression (MSE) in your own PyTorch loop, with ``gossiplearn.Peer``.

Each organization holds a few dozen rows of one regression problem, its inputs shifted its own
way. It trains a small MLP backbone and a personal linear head with Adam, in its own loop,
and calls ``peer.sync(model)`` every few steps: the backbone is averaged with the other
organizations', securely, in the background. At the end it stops training and keeps syncing
for a while, so that the last rounds land on the model as it is (every member then holds the
same backbone), and prints its validation MSE against the same model trained alone.

    gossiplearn init ./org-0 ... (three peers that admit each other; see the README)
    python examples/tabular_regression.py ./org-0 --org 0 --orgs 3 [--validate]

With ``--validate`` the peer keeps an average only if it does not raise this organization's
validation MSE, judged as the daemon judges it: after fitting the personal head to the new
backbone (``finetune_head``, ``--head-fit-steps`` Adam steps on the head alone). Judged under
the old head, nearly every average looks worse (the head was fitted to the old backbone) and
is refused.

Prints one JSON line: {"val_mse", "alone_mse", "rounds", "applied", "refused", "backbone"}.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time

import numpy as np
import torch
from torch import nn

import gossiplearn

FEATURES = 8


class Regressor(nn.Module):
    """A backbone shared with the others, and a head of this organization's own."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Linear(FEATURES, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh()
        )
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)).squeeze(-1)


def organization_data(org: int, orgs: int, rows: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_val, y_val) of one organization. Everyone measures the same
    nonlinear signal of the inputs (what a shared backbone can learn from all the rows);
    each organization's inputs are shifted its own way and its target is that signal on its
    own scale and offset (what its personal head learns)."""
    rng = np.random.default_rng([seed, org])
    shift = 0.3 * (org - (orgs - 1) / 2)
    scale, offset = 1.0 + 0.2 * (org % 3 - 1), 0.5 * (org % 2)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = rng.normal(shift, 1.0, size=(n, FEATURES))
        signal = np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] * x[:, 2] + 0.3 * x[:, 3]
        y = scale * signal + offset + rng.normal(0, 0.1, n)
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)

    return (*sample(rows), *sample(400))


def train(
    model: nn.Module,
    data: tuple[torch.Tensor, ...],
    steps: int,
    sync_every: int,
    peer: gossiplearn.Peer | None,
    seed: int,
    parameters: list[nn.Parameter] | None = None,
) -> None:
    """Adam on the MSE of batches of 16 rows; ``peer.sync(model)`` every ``sync_every`` steps."""
    x, y = data[0], data[1]
    optimizer = torch.optim.Adam(parameters or list(model.parameters()), lr=1e-2)
    batches = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        index = torch.randint(len(x), (16,), generator=batches)
        loss = nn.functional.mse_loss(model(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if peer is not None and sync_every and step % sync_every == 0:
            peer.sync(model)


def head_of(model: Regressor) -> list[nn.Parameter]:
    return list(model.head.parameters())


@torch.no_grad()
def validation_mse(model: nn.Module, data: tuple[torch.Tensor, ...]) -> float:
    return float(nn.functional.mse_loss(model(data[2]), data[3]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--org", type=int, required=True)
    parser.add_argument("--orgs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=60)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--sync-every", type=int, default=10)
    parser.add_argument("--settle-s", type=float, default=10.0)
    parser.add_argument("--head-steps", type=int, default=300)
    parser.add_argument(
        "--validate",
        action="store_true",
        help="undo averages that raise this organization's validation MSE after a head fit",
    )
    parser.add_argument(
        "--head-fit-steps",
        type=int,
        default=200,
        help="with --validate: Adam steps on the head alone after each average, before judging",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the same initial model everywhere
    model = Regressor()
    alone = copy.deepcopy(model)
    data = organization_data(args.org, args.orgs, args.rows)

    def validate(m: nn.Module) -> float:
        return validation_mse(m, data)

    def fit_head(m: nn.Module) -> None:  # as the daemon does before judging an average
        train(m, data, args.head_fit_steps, 0, None, seed=args.org, parameters=head_of(m))

    with gossiplearn.Peer(
        args.directory,
        validate=validate if args.validate else None,
        finetune_head=fit_head if args.validate else None,
    ) as peer:
        train(model, data, args.steps, args.sync_every, peer, seed=args.org)
        # Training is over: keep syncing, so the last rounds' averages land on this model as
        # it is (rounds need the others, who may still be training).
        settle_until = time.monotonic() + args.settle_s
        while time.monotonic() < settle_until:
            peer.sync(model)
            time.sleep(0.1)
        status = peer.status()
    rounds, learning = status["rounds"]["completed"], status["learning"]
    # The shared backbone is settled: fit this organization's head to it (the backbone is
    # left as the group agreed it).
    train(model, data, args.head_steps, 0, None, seed=args.org, parameters=head_of(model))
    train(alone, data, args.steps, 0, None, seed=args.org)
    train(alone, data, args.head_steps, 0, None, seed=args.org, parameters=head_of(alone))
    backbone = torch.cat([p.detach().reshape(-1) for p in model.backbone.parameters()])
    print(
        json.dumps(
            {
                "val_mse": round(validation_mse(model, data), 5),
                "alone_mse": round(validation_mse(alone, data), 5),
                "rounds": rounds,
                "applied": learning["averages_applied"],
                "refused": learning["averages_refused"],
                "backbone": hashlib.blake2b(backbone.numpy().tobytes(), digest_size=8).hexdigest(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
