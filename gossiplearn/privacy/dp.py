"""Record-level differential privacy (DP-SGD through Opacus), opt-in with ``[privacy]``.

What is protected: each training record of one peer. Every step that reads training records
(the round's training and the head fine-tune after an average) clips each record's gradient to
``max_grad_norm`` and adds Gaussian noise of ``noise_multiplier x max_grad_norm``, on a batch
drawn by Poisson sampling (each record in with probability batch_size / records). An RDP
accountant composes those steps, so everything the peer shares (its backbone, in every round)
and keeps (its head) is (epsilon, delta)-DP with respect to its training records. Evaluation
reads only the validation and test sets, which are not covered (they are not trained on).

This module imports neither torch nor Opacus at import time: a daemon with privacy off never
loads Opacus (about 1,800 modules). Opacus is an optional dependency: ``pip install
'gossiplearn[dp]'``.
"""

from __future__ import annotations

import functools
import math
import secrets
import warnings
from dataclasses import dataclass
from typing import Any

#: The one line a peer with privacy on but without Opacus stops with.
INSTALL_HINT = "privacy.enabled needs Opacus, which is not installed: pip install 'gossiplearn[dp]'"


class PrivacyError(ValueError):
    """Privacy settings that cannot be used here (one line, naming the key)."""


class PrivacyBudgetSpent(RuntimeError):
    """The next steps would take the epsilon spent past ``privacy.epsilon``."""


@dataclass(frozen=True)
class PrivacyConfig:
    """DP-SGD settings of one peer (``[privacy]``).

    ``noise_multiplier`` 0 derives it from ``epsilon``, ``delta`` and the plan: ``rounds``
    rounds of one training budget plus one head fine-tune each, at this peer's sampling rate,
    so the budget lasts exactly those rounds. A fixed ``noise_multiplier`` spends the budget
    at its own pace. Either way the peer stops training when the next round would exceed
    ``epsilon``. ``noise_seed`` None draws the sampling and the noise from OS randomness (an
    attacker who could predict them could subtract the noise); the simulation sets it to be
    reproducible.
    """

    epsilon: float
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    noise_multiplier: float = 0.0
    rounds: int = 100
    noise_seed: int | None = None

    def __post_init__(self) -> None:
        problem = privacy_problem(
            self.epsilon, self.delta, self.max_grad_norm, self.noise_multiplier, self.rounds
        )
        if problem:
            raise PrivacyError(problem)


def privacy_problem(
    epsilon: float, delta: float, max_grad_norm: float, noise_multiplier: float, rounds: int
) -> str | None:
    """What is wrong with these settings (naming the ``privacy.`` key), or None."""
    if not (epsilon > 0 and math.isfinite(epsilon)):
        return f"privacy.epsilon must be > 0 (the total budget), got {epsilon:g}"
    if not 0 < delta < 1:
        return f"privacy.delta must be in (0, 1), far below 1/training samples; got {delta:g}"
    if not max_grad_norm > 0:
        return f"privacy.max_grad_norm must be > 0 (per-record clipping), got {max_grad_norm:g}"
    if not noise_multiplier >= 0:
        return f"privacy.noise_multiplier must be >= 0 (0: derived), got {noise_multiplier:g}"
    if rounds < 1:
        return f"privacy.rounds must be >= 1 (rounds the budget is planned for), got {rounds}"
    return None


def check_delta(config: PrivacyConfig, records: int) -> None:
    """delta must be below 1/records: a larger one allows releasing a whole record."""
    if records and not config.delta < 1 / records:
        raise PrivacyError(
            f"privacy.delta = {config.delta:g} must be below 1/training samples "
            f"(1/{records} = {1 / records:.3g}): lower privacy.delta"
        )


def require_opacus() -> None:
    try:
        import opacus  # noqa: F401
    except ImportError:
        raise PrivacyError(INSTALL_HINT) from None


def random_seed(config: PrivacyConfig) -> int:
    return secrets.randbits(63) if config.noise_seed is None else config.noise_seed


def derive_noise_multiplier(config: PrivacyConfig, sample_rate: float, steps: int) -> float:
    """``config.noise_multiplier``, or the smallest one (RDP) that keeps ``steps`` steps at
    ``sample_rate`` within (epsilon, delta)."""
    if config.noise_multiplier > 0:
        return config.noise_multiplier
    require_opacus()
    return _derived_noise(config.epsilon, config.delta, sample_rate, max(1, steps))


# Opacus's search evaluates the accountant ~40 times (7 s on a busy core); every method of a
# simulation asks the same question for the same peer.
@functools.lru_cache(maxsize=256)
def _derived_noise(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # see PrivacyLedger.epsilon
        return float(
            get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant="rdp",
            )
        )


class PrivacyLedger:
    """The steps spent on this peer's training records, and their epsilon (RDP accountant).

    ``history`` is ``[[noise_multiplier, sample_rate, steps], ...]``, plain JSON, so the daemon
    can keep it across restarts (``DIR/privacy.json``).
    """

    def __init__(self, config: PrivacyConfig, noise_multiplier: float, sample_rate: float) -> None:
        require_opacus()
        self.config = config
        self.noise_multiplier = noise_multiplier
        self.sample_rate = sample_rate
        self.history: list[list[float]] = []

    def spend(self, steps: int = 1) -> None:
        entry = [self.noise_multiplier, self.sample_rate, steps]
        if self.history and self.history[-1][:2] == entry[:2]:
            self.history[-1][2] += steps
        else:
            self.history.append(entry)

    @property
    def steps(self) -> int:
        return int(sum(entry[2] for entry in self.history))

    def epsilon(self, extra_steps: int = 0) -> float:
        """Epsilon spent so far, or after ``extra_steps`` more steps."""
        history = [(float(s), float(q), int(n)) for s, q, n in self.history]
        if extra_steps:
            history.append((self.noise_multiplier, self.sample_rate, extra_steps))
        if not history:
            return 0.0
        return _rdp_epsilon(tuple(history), self.config.delta)

    def affords(self, steps: int) -> bool:
        return self.epsilon(steps) <= self.config.epsilon

    def load(self, history: list[list[float]]) -> None:
        self.history = [[float(s), float(q), int(n)] for s, q, n in history]


# 0.16 s per call; the status document and the schedule ask about the same history.
@functools.lru_cache(maxsize=1024)
def _rdp_epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = list(history)
    with warnings.catch_warnings():
        # "optimal order is the largest alpha": the bound is valid, only not the tightest.
        warnings.simplefilter("ignore", UserWarning)
        return float(accountant.get_epsilon(delta=delta))


def make_private(
    module: Any,
    optimizer: Any,
    data_loader: Any,
    config: PrivacyConfig,
    steps: int = 0,
) -> tuple[Any, Any, Any, Any]:
    """For a user trainer: ``(module, optimizer, data_loader, accountant)`` made private by
    Opacus (per-sample clipping to ``config.max_grad_norm``, Gaussian noise, Poisson
    sampling, an RDP accountant). ``steps``: the total optimizer steps planned, needed when
    ``config.noise_multiplier`` is 0 (derived from epsilon). Report the spending from
    ``privacy_spent()`` as ``(accountant.get_epsilon(config.delta), config.delta)``."""
    require_opacus()
    from opacus import PrivacyEngine

    sample_rate = 1 / len(data_loader)
    if config.noise_multiplier == 0 and steps < 1:
        raise PrivacyError("make_private: give steps (planned) or privacy.noise_multiplier > 0")
    noise = derive_noise_multiplier(config, sample_rate, steps)
    engine = PrivacyEngine(accountant="rdp")
    module, optimizer, data_loader = engine.make_private(
        module=module,
        optimizer=optimizer,
        data_loader=data_loader,
        noise_multiplier=noise,
        max_grad_norm=config.max_grad_norm,
        poisson_sampling=True,
    )
    return module, optimizer, data_loader, engine.accountant
