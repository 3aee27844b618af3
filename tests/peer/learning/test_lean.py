"""A daemon's optimizer must not import torch._dynamo (sympy, torch.distributed, ...: ~100 MB
resident and seconds of start-up), and training must compute exactly the same numbers."""

from __future__ import annotations

import subprocess
import sys

TRAIN = """
import sys
import torch
{patch}
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
for _ in range(5):
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
state = optimizer.state_dict()
optimizer.load_state_dict(state)
print("torch._dynamo" in sys.modules)
print(repr([p.detach().flatten().tolist() for p in model.parameters()]))
"""


def _run(patch: str) -> list[str]:
    code = TRAIN.format(patch=patch)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_training_without_torch_dynamo_computes_the_same_parameters() -> None:
    lean = _run(
        "from gossiplearn.peer.learning.lean import avoid_dynamo_import; assert avoid_dynamo_import() > 0"
    )
    plain = _run("")
    assert lean[0] == "False"  # never imported
    assert plain[0] == "True"  # what it costs otherwise (if torch changes this, drop the patch)
    assert lean[1] == plain[1]  # bit-identical parameters after 5 steps with momentum
