"""Local training of a :class:`SplitModel` on the peer's own data: the trainer protocol, and
the built-in trainer (plain SGD, cross-entropy, argmax accuracy on ``(input, label)`` samples).

A trainer does three things a peer needs around its rounds (:class:`TrainerProtocol`): train
everything for one round's budget (before sharing the backbone), fine-tune only the head
(after an average replaced the backbone), and evaluate on its validation data (whether an
average helps) and its test data (reported). ``training.trainer = "module:Class"`` replaces the
built-in one with any class that does these (a regression, multi-label or sequence loss, a
different optimizer, another batch source): it is built as
``Class(model, data, config, **training.options)``.

Deterministic by construction: each epoch's shuffle comes from a fresh ``torch.Generator``
seeded from ``(config.seed, epoch counter)``, and each call starts SGD with a fresh momentum (momentum
from before an averaging round would point the wrong way after it). The daemon runs these
calls in a worker thread, so nothing here touches torch's global state (no set_num_threads,
no global seeding, no DataLoader worker processes or threads).
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset, default_collate

from gossiplearn.peer.learning.data import ModelFactoryError, PeerData, TrainerError, resolve
from gossiplearn.peer.learning.split_model import SplitModel
from gossiplearn.privacy.dp import (
    PrivacyBudgetSpent,
    PrivacyConfig,
    PrivacyLedger,
    check_delta,
    derive_noise_multiplier,
    random_seed,
)

log = logging.getLogger(__name__)

# Evaluation needs no gradients, so it can afford bigger batches than training.
_MIN_EVAL_BATCH = 256
SPLITS = ("validation", "test")


@runtime_checkable
class TrainerProtocol(Protocol):
    """What gossiplearn asks of a trainer (``training.trainer = "module:Class"``).

    It is constructed as ``Class(model, data, config, **options)`` with the peer's
    :class:`~gossiplearn.peer.learning.split_model.SplitModel`, its :class:`~gossiplearn.peer.learning.data.PeerData`
    (train, validation, test) and the :class:`TrainConfig`; it owns the device, optimizer,
    loss and batches. Every method runs in a worker thread and returns plain floats.
    """

    #: The number of training samples (the averaging weight when weighting is on, capped).
    num_train_samples: int

    def train_round(self) -> dict[str, float]:
        """Train all parameters for one round's local budget (e.g. config.steps_per_round
        batches or config.epochs epochs)."""
        ...

    def finetune_head(self) -> dict[str, float]:
        """Train only the head on top of a backbone that was just replaced."""
        ...

    def evaluate(self, split: str = "test") -> dict[str, float]:
        """Metrics on ``split`` ("validation" or "test"). The one ``training.acceptance_metric``
        names must be there, lower is better (a loss or an error rate); the simulation reports
        "accuracy"."""
        ...


def make_trainer(
    spec: str,
    model: SplitModel,
    data: PeerData,
    config: TrainConfig,
    options: Mapping[str, Any] | None = None,
    key: str = "training.trainer",
) -> TrainerProtocol:
    """The trainer ``training.trainer`` names (``spec``, "module:Class"), built as
    ``Class(model, data, config, **options)``; the built-in :class:`Trainer` when ``spec`` is
    empty. Raises TrainerError (one line, naming ``key``, where the spec came from) if it
    cannot be had."""
    if not spec:
        if options:
            raise TrainerError("training.options are for training.trainer, which is not set")
        return Trainer(model, data.train, data.validation, config, data.test)
    factory = resolve(spec, key, TrainerError)
    try:
        trainer = factory(model, data, config, **(options or {}))
    except Exception as exc:
        with_options = f" with training.options {dict(options)}" if options else ""
        raise TrainerError(
            f"{key} {spec!r} failed to build{with_options}: {type(exc).__name__}: {exc}"
        ) from exc
    missing = [
        name
        for name in ("train_round", "finetune_head", "evaluate")
        if not callable(getattr(trainer, name, None))
    ]
    if missing:
        raise TrainerError(
            f"{key} {spec!r}: {type(trainer).__name__} has no {', '.join(missing)} "
            "(a trainer needs train_round, finetune_head and evaluate; see TrainerProtocol)"
        )
    if config.privacy is not None and not callable(getattr(trainer, "privacy_spent", None)):
        raise TrainerError(
            f"{key} {spec!r} does not report its privacy spending: implement privacy_spent() "
            "-> (epsilon, delta) (gossiplearn.privacy.make_private gives an accountant), or "
            "set privacy.enabled = false"
        )
    if not isinstance(getattr(trainer, "num_train_samples", None), int):
        trainer.num_train_samples = len(data.train)  # type: ignore[arg-type]
    return trainer


def first_line(error: BaseException) -> str:
    """An exception's message, first line only (for one-line errors)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def checked_module(module: object, model_name: str) -> torch.nn.Module:
    """``module`` if a model factory (named ``model_name``) returned a torch module; else a
    one-line ModelFactoryError."""
    if not isinstance(module, torch.nn.Module):
        kind = type(module).__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        raise ModelFactoryError(
            f"{model_name} returned {article} {kind}, not a torch.nn.Module: return the model"
        )
    return module


def first_evaluation(
    trainer: TrainerProtocol, model_name: str, data_name: str, hint: str
) -> dict[str, float]:
    """The trainer's metrics on the test split, once, before any training: a model that
    does not fit the data's samples fails here in one line (TrainerError naming the model,
    the data and ``hint``, what to check), not in the first round."""
    try:
        return dict(trainer.evaluate("test"))
    except Exception as exc:
        log.debug("the first evaluation failed", exc_info=True)
        raise TrainerError(
            f"the model of {model_name} fails on the samples of {data_name} "
            f"({type(exc).__name__}: {first_line(exc)}): {hint}"
        ) from exc


class DeviceUnavailable(ValueError):
    """``training.device`` names a device this machine does not have."""


def resolve_device(name: str) -> torch.device:
    """``training.device``: "cpu", "cuda", "cuda:N", "mps", or "auto" (CUDA if available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceUnavailable(
            f'training.device = {name!r} is not a torch device: use "cpu", "cuda[:N]", "mps" '
            'or "auto"'
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(
                f"training.device = {name!r}, but torch sees no CUDA device here (a CPU build, "
                'or no driver): set training.device = "cpu" or "auto"'
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailable(
                f"training.device = {name!r}, but there are {torch.cuda.device_count()} CUDA "
                'device(s): pick one that exists, or "auto"'
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailable(
            f'training.device = {name!r}, but MPS is not available here: use "cpu" or "auto"'
        )
    elif device.type not in ("cpu", "cuda", "mps"):
        raise DeviceUnavailable(f'training.device = {name!r}: use "cpu", "cuda[:N]" or "auto"')
    return device


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
    device: str = "cpu"
    #: DP-SGD settings (``[privacy]``); None: privacy off
    privacy: PrivacyConfig | None = None

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.head_epochs < 0 or self.steps_per_round < 0:
            raise ValueError("epochs, steps_per_round and head_epochs must be >= 0")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not self.lr > 0:
            raise ValueError("lr must be > 0")
        if not 0 <= self.momentum < 1:
            raise ValueError("momentum must be in [0, 1)")


def _step_hooks() -> tuple[Mapping[int, Any], Mapping[int, Any]] | None:
    """torch's global optimizer step (pre, post) hooks, where torch 2 keeps them; None if
    this torch keeps them elsewhere."""
    from torch.optim import optimizer

    pre = getattr(optimizer, "_global_optimizer_pre_hooks", None)
    post = getattr(optimizer, "_global_optimizer_post_hooks", None)
    return (pre, post) if isinstance(pre, Mapping) and isinstance(post, Mapping) else None


_STEP_HOOKS = _step_hooks()


class _SGDSteps:
    """What torch's global optimizer step hooks are given for the built-in trainer's SGD
    steps (see Trainer._fit): a torch.optim.SGD's ``param_groups`` and ``defaults``, and its
    momentum kept elsewhere (an empty ``state``)."""

    def __init__(self, parameters: Sequence[torch.nn.Parameter], lr: float, momentum: float):
        self.defaults = {"lr": lr, "momentum": momentum, "dampening": 0, "weight_decay": 0}
        self.param_groups = [{"params": list(parameters), **self.defaults}]
        self.state: dict[Any, Any] = {}


def _batch(dataset: Dataset, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate the (input, label) samples at ``indices``."""
    if isinstance(dataset, TensorDataset):
        # Gathering from whole tensors is much faster than one __getitem__ per sample, and
        # index_select (the same rows, copied) a few times faster than fancy indexing's
        # parsing of the index for a small batch.
        inputs, labels = (
            torch.index_select(tensor, 0, indices)
            if tensor.device == indices.device
            else tensor[indices]
            for tensor in dataset.tensors
        )
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
    """The built-in trainer: SGD with momentum, cross-entropy, argmax accuracy, for
    ``(input, long label)`` samples. Implements :class:`TrainerProtocol`."""

    def __init__(
        self,
        model: SplitModel,
        train_data: Dataset,
        val_data: Dataset,
        config: TrainConfig = TrainConfig(),
        test_data: Dataset | None = None,
    ) -> None:
        """``val_data`` decides whether an average helps (:meth:`losses`); ``test_data``
        (default: ``val_data``) is what :meth:`evaluate` reports on. The model moves to
        ``config.device``."""
        model.module.to(resolve_device(config.device))
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
        self._evaluated: dict[Any, tuple[np.ndarray, np.ndarray]] = {}  # see _per_sample
        self.privacy: PrivacyLedger | None = None
        if config.privacy is not None:
            self._make_private(config.privacy)

    # ---- differential privacy (DP-SGD, see gossiplearn/privacy/dp.py) ----

    def _make_private(self, privacy: PrivacyConfig) -> None:
        check_delta(privacy, self.num_train_samples)
        # Poisson sampling: each record is in a step's batch with this probability, so the
        # expected batch is config.batch_size (an "epoch" is 1 / sample_rate steps).
        self.sample_rate = min(1.0, self.config.batch_size / self.num_train_samples)
        train_steps, head_steps = self.planned_steps()
        noise = derive_noise_multiplier(
            privacy, self.sample_rate, privacy.rounds * (train_steps + head_steps)
        )
        self.privacy = PrivacyLedger(privacy, noise, self.sample_rate)
        seed = random_seed(privacy)
        # Neither the sampling nor the noise may come from training.seed or torch's global
        # generator, both of which an attacker may know (see PrivacyConfig.noise_seed).
        self._sampling = torch.Generator().manual_seed(seed)
        self._noise = torch.Generator(device=self._device).manual_seed(seed ^ 0x5EED)

    def planned_steps(self) -> tuple[int, int]:
        """(training steps, head fine-tune steps) of one round under privacy."""
        per_epoch = math.ceil(self.num_train_samples / self.config.batch_size)
        train = self.config.steps_per_round or self.config.epochs * per_epoch
        return train, self.config.head_epochs * per_epoch

    def privacy_spent(self) -> tuple[float, float]:
        """(epsilon, delta) spent on the training records so far ((0, 0): privacy off)."""
        if self.privacy is None:
            return 0.0, 0.0
        return self.privacy.epsilon(), self.privacy.config.delta

    def privacy_next_round(self) -> float:
        """The epsilon spent after one more round (its training and one head fine-tune)."""
        if self.privacy is None:
            return 0.0
        return self.privacy.epsilon(sum(self.planned_steps()))

    def _fit_private(
        self, parameters: Sequence[torch.nn.Parameter], steps: int
    ) -> dict[str, float]:
        """DP-SGD on ``parameters`` for ``steps`` Poisson-sampled batches: each record's
        gradient clipped to max_grad_norm, Gaussian noise added, every step accounted.
        Raises PrivacyBudgetSpent, before touching a record, if they would exceed epsilon."""
        from opacus.grad_sample import GradSampleModule
        from opacus.optimizers import DPOptimizer

        ledger = self.privacy
        assert ledger is not None
        if not ledger.affords(steps):
            raise PrivacyBudgetSpent(
                f"{steps} more steps would spend epsilon {ledger.epsilon(steps):.3f} of "
                f"{ledger.config.epsilon:g}"
            )
        # Summed per-sample losses: the per-sample gradients are those of each record, and
        # DPOptimizer divides the noisy sum by the expected batch size ("mean").
        private_module = GradSampleModule(self.model.module, batch_first=True, loss_reduction="sum")
        optimizer = DPOptimizer(
            torch.optim.SGD(parameters, lr=self.config.lr, momentum=self.config.momentum),
            noise_multiplier=ledger.noise_multiplier,
            max_grad_norm=ledger.config.max_grad_norm,
            expected_batch_size=max(1, round(self.sample_rate * self.num_train_samples)),
            loss_reduction="mean",
            generator=self._noise,
        )
        device = self._device
        total_loss, seen = 0.0, 0
        # Opacus's hooks on a first layer whose input needs no gradient warn: expected.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        try:
            for _ in range(steps):
                chosen = torch.rand(self.num_train_samples, generator=self._sampling)
                indices = (chosen < self.sample_rate).nonzero().flatten()
                inputs, labels = self._sampled_batch(indices)
                inputs, labels = inputs.to(device), labels.to(device)
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(private_module(inputs), labels, reduction="sum")
                loss.backward()
                optimizer.step()
                ledger.spend(1)
                total_loss += loss.item()
                seen += len(labels)
        finally:
            private_module._close()  # removes its hooks: the module is as it was
        return {"loss": total_loss / seen if seen else math.nan}

    def _sampled_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(indices):
            return _batch(self.train_data, indices)
        # An empty Poisson batch is still a step (noise only): shapes from record 0.
        inputs, labels = _batch(self.train_data, torch.zeros(1, dtype=torch.long))
        return inputs[:0], labels[:0]

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
        """SGD on ``parameters`` over ``batches`` (index tensors); the mean per-sample loss.

        The arithmetic of ``torch.optim.SGD(parameters, lr, momentum)``'s single-tensor path
        (a fresh momentum per call: the first step's buffer is that step's gradient, then
        ``buffer = momentum * buffer + gradient``; ``parameter -= lr * buffer``), bit for bit,
        without the optimizer's per-call and per-step machinery (its construction, step
        wrappers and profiling, and the first construction's import of torch._dynamo, 3 s in
        each process): for a small model that machinery cost more than the arithmetic (memory
        mode, 1000 peers: a third of the training time). torch's global optimizer step hooks
        (``register_optimizer_step_pre_hook`` / ``_post_hook``) still see every step, given
        a :class:`_SGDSteps` for the optimizer (the simulation counts steps with them)."""
        if _STEP_HOOKS is None:  # a torch without them where we look: its own SGD
            return self._fit_with_optimizer(parameters, batches)
        pre_hooks, post_hooks = _STEP_HOOKS
        lr, momentum = self.config.lr, self.config.momentum
        momenta: list[torch.Tensor | None] = [None] * len(parameters)
        steps = _SGDSteps(parameters, lr, momentum)
        module = self.model.module
        device = self._device
        total_loss, seen = 0.0, 0
        for indices in batches:
            inputs, labels = _batch(self.train_data, indices)
            inputs, labels = inputs.to(device), labels.to(device)
            for parameter in parameters:
                parameter.grad = None
            loss = F.cross_entropy(module(inputs), labels)
            loss.backward()
            for pre_hook in tuple(pre_hooks.values()):
                pre_hook(steps, (steps,), {})
            with torch.no_grad():
                for i, parameter in enumerate(parameters):
                    step = parameter.grad
                    if step is None:
                        continue  # as torch's SGD: no gradient, no step (nor momentum)
                    if momentum != 0:
                        buffer = momenta[i]
                        if buffer is None:
                            buffer = momenta[i] = step.detach().clone()
                        else:
                            buffer.mul_(momentum).add_(step)
                        step = buffer
                    parameter.add_(step, alpha=-lr)
            for post_hook in tuple(post_hooks.values()):
                post_hook(steps, (steps,), {})
            total_loss += loss.item() * len(labels)
            seen += len(labels)
        return {"loss": total_loss / seen if seen else math.nan}

    def _fit_with_optimizer(
        self, parameters: Sequence[torch.nn.Parameter], batches: Iterable[torch.Tensor]
    ) -> dict[str, float]:
        """:meth:`_fit` through a fresh ``torch.optim.SGD``."""
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

    def train_round(self) -> dict[str, float]:
        return self.train_local()

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
        if self.privacy is not None:
            return self._fit_private(list(self.model.module.parameters()), self.planned_steps()[0])
        return self._fit(list(self.model.module.parameters()), batches)

    def finetune_head(self) -> dict[str, float]:
        """Train only the head for ``config.head_epochs``; the backbone stays bit-identical.

        Modules holding no head tensor run in eval mode, so backbone BatchNorm statistics do
        not drift and backbone dropout does not perturb the features the head learns from.
        """
        module = self.model.module
        module.train()
        for submodule in self._headless(module):
            submodule.eval()
        with _frozen(self.model.backbone_parameters()):
            if self.privacy is not None:
                return self._fit_private(self.model.head_parameters(), self.planned_steps()[1])
            return self._fit(self.model.head_parameters(), self._epochs(self.config.head_epochs))

    def _headless(self, module: torch.nn.Module) -> list[torch.nn.Module]:
        """The submodules of ``module`` that hold no head tensor (found once per module: a
        walk over every submodule's tensor names each fine-tune cost more than the fine-tune
        of a small head)."""
        found = getattr(self, "_headless_of", None)
        if found is None or found[0] is not module:
            headless = []
            for module_name, submodule in module.named_modules():
                tensor_names = (
                    f"{module_name}.{name}" if module_name else name
                    for name, _ in chain(submodule.named_parameters(), submodule.named_buffers())
                )
                if not any(self.model.is_head(name) for name in tensor_names):
                    headless.append(submodule)
            found = self._headless_of = (module, headless)
        return found[1]

    def evaluate(self, split: str = "test") -> dict[str, float]:
        """Accuracy, error (1 - accuracy) and mean cross-entropy ("loss") on ``split``."""
        losses, correct = self._per_sample(self._split(split))
        return {
            "accuracy": float(correct.mean()),
            "error": float(1.0 - correct.mean()),
            "loss": float(losses.mean()),
            "cross_entropy": float(losses.mean()),
            "samples": float(len(losses)),
        }

    def losses(self, split: str, metric: str) -> np.ndarray:
        """Each sample's ``metric`` on ``split``: "error" (0 if classified right, else 1) or
        "loss"/"cross_entropy". Optional in the protocol: with it, personal acceptance can
        tell harm from noise."""
        figures = self.per_sample_metrics(split)
        if metric not in figures:
            raise KeyError(metric)
        return figures[metric]

    def per_sample_metrics(self, split: str) -> dict[str, np.ndarray]:
        """Every per-sample metric of :meth:`losses` on ``split`` from one pass over it.
        Optional in the protocol: with it, personal acceptance reads the validation data once
        per model instead of once per metric."""
        losses, correct = self._per_sample(self._split(split))
        return {"error": (~correct).astype(np.float64), "loss": losses, "cross_entropy": losses}

    def _split(self, split: str) -> Dataset:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.val_data if split == "validation" else self.test_data

    def _per_sample(self, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
        """(loss, correct) of each sample of ``dataset``, in order. Remembered while the
        model's tensors are unchanged: personal acceptance asks for the error and the loss of
        the same validation set, and a simulation for the test figures again after applying
        (memory mode, 10,000 peers: 6 forward passes per peer and round became 3)."""
        module = self.model.module
        # Every in-place change (optimizer steps, set_backbone, restores, load_state_dict)
        # bumps a tensor's version; a tensor replaced outright has another data pointer.
        state = tuple(
            (t.data_ptr(), t._version) for t in chain(module.parameters(), module.buffers())
        )
        key = (id(dataset), state)
        cached = getattr(self, "_evaluated", {}).get(key)
        if cached is None:
            cached = self._forward(dataset)
            self._evaluated = {key: cached}  # only the latest model's figures
        return cached[0].copy(), cached[1].copy()

    @torch.no_grad()
    def _forward(self, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
        module = self.model.module
        module.eval()
        device = self._device
        samples: int = len(dataset)  # type: ignore[arg-type]
        size = max(self.config.batch_size, _MIN_EVAL_BATCH)
        if isinstance(dataset, TensorDataset) and samples <= size:
            # One batch of every sample, in order: the dataset's own tensors (the same
            # values as gathered rows, without the gather and the concatenations).
            inputs, labels = (tensor.to(device).contiguous() for tensor in dataset.tensors)
            logits = module(inputs)
            losses = F.cross_entropy(logits, labels, reduction="none").double().cpu()
            return losses.numpy(), (logits.argmax(dim=1) == labels).cpu().numpy()
        losses_of, correct_of = [], []
        for indices in torch.arange(samples).split(size):
            inputs, labels = _batch(dataset, indices)
            inputs, labels = inputs.to(device), labels.to(device)
            logits = module(inputs)
            losses_of.append(F.cross_entropy(logits, labels, reduction="none").double().cpu())
            correct_of.append((logits.argmax(dim=1) == labels).cpu())
        return torch.cat(losses_of).numpy(), torch.cat(correct_of).numpy()
