"""The built-in learning of ``gossiplearn run``: what the daemon (peer/daemon.py) plugs into the
network side (peer/net/runtime.py) as its ``Learning``.

:class:`BuiltinLearning` owns the model: it builds it (``model.factory``), loads this
organization's data (``data.loader``), the trainer (the built-in one or ``training.trainer``)
and resumes from the last checkpoint. Then, over and over, it trains one round's fixed budget,
offers the backbone to exactly one round, and waits for that round to be over (see
:meth:`BuiltinLearning.run`); when a round finishes it takes the average in through personal
acceptance (learner.py), evaluates on its own test data and writes a checkpoint (every
``training.checkpoint_every`` rounds, and when it stops). A checkpoint that cannot be written
is logged, counted and survived (the last good one stays on disk).
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from gossiplearn.fileio import write_atomically
from gossiplearn.peer.config import CHECKPOINT_DIR, PeerConfig
from gossiplearn.peer.learning.learner import Learner
from gossiplearn.protocol.events import RoundFinished

if TYPE_CHECKING:  # the runtime hands itself to every call; the learning side never builds one
    from gossiplearn.peer.net.runtime import PeerRuntime

log = logging.getLogger("gossiplearn.peer")

#: A contribution no round took for this many round intervals is replaced by a newly trained one.
WAIT_INTERVALS = 10
#: The privacy ledger (the DP steps spent on the training records), next to the checkpoints:
#: it survives restarts, so a restart does not reset the budget.
PRIVACY_FILE = "privacy.json"


class BuiltinLearning:
    """The model, data and trainer of ``gossiplearn run``, and its learning schedule."""

    def __init__(self) -> None:
        self.model: Any = None  # SplitModel, once started
        self.learner: Learner | None = None
        self.accuracy: float | None = None
        self.digests: dict[str, str] = {}
        self.training_samples = 0
        self.validation_samples = 0
        self.test_samples = 0
        #: The checkpoint this run started from (None: a fresh model), for status and churn tests.
        self.resumed_from: dict[str, Any] | None = None
        self.checkpoint_failures = 0
        self.last_checkpoint_error: str | None = None
        self._checkpoint_logged: set[str] = set()
        self._lock = trio.Lock()  # the model: training, applying and checkpointing take turns
        self._runtime: PeerRuntime | None = None
        #: [privacy] on and the budget cannot pay for another round: no training, no offers.
        self.privacy_exhausted = False

    @property
    def schema_hash(self) -> bytes | None:
        return None if self.model is None else self.model.schema_hash

    @asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """Hold the model still: no training, applying or checkpointing inside the block
        (each waits for its end; one already running is waited for first). For tests that
        compare the model before and after an attack while the schedule runs."""
        async with self._lock:
            yield

    # ---- set-up (CPU work, run in a thread) ----

    async def start(self, runtime: PeerRuntime) -> None:
        import torch

        self._runtime = runtime
        torch.set_num_threads(max(1, runtime.config.training.threads))
        await trio.to_thread.run_sync(self._load, runtime)

    def _load(self, runtime: PeerRuntime) -> None:
        from gossiplearn.peer.learning.checkpoint import CheckpointMeta, load_checkpoint
        from gossiplearn.peer.learning.trainer import make_trainer

        cfg = runtime.config
        self.model, data, trainer, first = load_learning(cfg)
        training = cfg.training
        loaded = load_checkpoint(runtime.directory / CHECKPOINT_DIR, self.model)
        reference = None
        if training.local_reference:
            # From the model as loaded: what this peer alone would do from here on.
            alone = split_model(cfg, copy.deepcopy(self.model.module))
            reference = (
                alone,
                make_trainer(
                    training.trainer, alone, data, training.to_train_config(), training.options
                ),
            )
        if cfg.privacy.enabled:
            self._load_privacy_ledger(runtime, trainer)
        self.learner = Learner(
            self.model,
            trainer,
            training.to_acceptance_config(),
            mix=cfg.round.mix,
            reference=reference,
        )
        self.training_samples = trainer.num_train_samples
        self.validation_samples = len(data.validation)
        self.test_samples = len(data.test) if data.separate_test else 0
        if loaded is not None:
            self.resumed_from = {
                "rounds_completed": loaded.rounds_completed,
                "model_digest": loaded.model_digest,
                "saved_at": loaded.saved_at,
            }
            if "accuracy" not in loaded.metrics:
                first = self.learner.evaluate()  # of the model as loaded
        meta = loaded or CheckpointMeta()
        runtime.rounds.completed = meta.rounds_completed
        runtime.rounds.aborted = meta.rounds_aborted
        self.accuracy = meta.metrics.get("accuracy", first.get("accuracy"))
        self._refresh_digests()
        runtime.metrics.accuracy.set(self.accuracy or 0.0)
        self._update_privacy_metrics(runtime)

    def _load_privacy_ledger(self, runtime: PeerRuntime, trainer: Any) -> None:
        ledger = getattr(trainer, "privacy", None)
        path = runtime.directory / PRIVACY_FILE
        if ledger is None or not path.exists():
            return  # a user trainer keeps its own accounting
        document = json.loads(path.read_text(encoding="utf-8"))
        ledger.load(document["history"])

    def _save_privacy_ledger(self, runtime: PeerRuntime) -> None:
        """Write the steps spent so far (atomically; called after every training budget)."""
        ledger = getattr(self.learner.trainer, "privacy", None) if self.learner else None
        if ledger is None:
            return
        text = json.dumps({"history": ledger.history, "epsilon_spent": ledger.epsilon()})
        write_atomically(
            runtime.directory / PRIVACY_FILE,
            lambda temp: temp.write_text(text, encoding="utf-8"),
            0o644,
        )

    def privacy_status(self) -> dict[str, Any] | None:
        """The status document's ``privacy`` (None when it is off)."""
        config = self._runtime.config.privacy if self._runtime else None
        trainer = self.learner.trainer if self.learner else None
        if config is None or not config.enabled or trainer is None:
            return None
        spent, delta = trainer.privacy_spent()  # type: ignore[attr-defined]
        ledger = getattr(trainer, "privacy", None)
        return {
            "enabled": True,
            "epsilon": config.epsilon,
            "delta": delta or config.delta,
            "epsilon_spent": spent,
            "epsilon_remaining": max(0.0, config.epsilon - spent),
            "max_grad_norm": config.max_grad_norm,
            "noise_multiplier": None if ledger is None else ledger.noise_multiplier,
            "sample_rate": None if ledger is None else ledger.sample_rate,
            "steps": None if ledger is None else ledger.steps,
            "exhausted": self.privacy_exhausted,
        }

    def _privacy_affords_round(self, runtime: PeerRuntime) -> bool:
        """Whether one more round (training and head fine-tune) fits in privacy.epsilon: the
        built-in trainer says what it would spend; a user trainer, what it has spent."""
        trainer = self.learner.trainer if self.learner else None
        if not runtime.config.privacy.enabled or trainer is None:
            return True
        budget = runtime.config.privacy.epsilon
        next_round = getattr(trainer, "privacy_next_round", None)
        if next_round is not None:
            return bool(next_round() <= budget)
        return bool(trainer.privacy_spent()[0] < budget)  # type: ignore[attr-defined]

    def _update_privacy_metrics(self, runtime: PeerRuntime) -> None:
        status = self.privacy_status()
        if status is not None:
            runtime.metrics.privacy_epsilon_spent.set(status["epsilon_spent"])
            runtime.metrics.privacy_epsilon_remaining.set(status["epsilon_remaining"])
            runtime.metrics.privacy_exhausted.set(1.0 if self.privacy_exhausted else 0.0)

    async def _stop_for_privacy(self, runtime: PeerRuntime) -> None:
        """The budget is spent: say so once, and never train or offer again."""
        self.privacy_exhausted = True
        status = self.privacy_status() or {}
        log.warning(
            "privacy budget spent: epsilon %.3f of %g; this peer no longer trains or contributes",
            status.get("epsilon_spent", 0.0),
            runtime.config.privacy.epsilon,
        )
        self._update_privacy_metrics(runtime)
        await trio.sleep_forever()

    def _refresh_digests(self) -> None:
        self.digests = {
            "model": self.model.model_digest(),
            "backbone": self.model.backbone_digest(),
            "head": self.model.head_digest(),
        }

    def _checkpoint(self, runtime: PeerRuntime) -> None:
        from gossiplearn.peer.learning.checkpoint import CheckpointMeta, save_checkpoint

        meta = CheckpointMeta(
            rounds_completed=runtime.rounds.completed,
            rounds_aborted=runtime.rounds.aborted,
            metrics={"accuracy": self.accuracy} if self.accuracy is not None else {},
        )
        directory = runtime.directory / CHECKPOINT_DIR
        try:
            save_checkpoint(directory, self.model, meta)
        except Exception as exc:  # never fatal: the last good checkpoint stays on disk
            self.checkpoint_failures += 1
            runtime.metrics.checkpoint_failures.inc()
            self.last_checkpoint_error = f"{type(exc).__name__}: {exc}"
            cause = f"{type(exc).__name__}/{getattr(exc, 'errno', '')}"
            if cause not in self._checkpoint_logged:
                self._checkpoint_logged.add(cause)
                log.error(
                    "cannot write a checkpoint to %s (%s); running on, with the last good "
                    "checkpoint on disk (rounds since are lost if the peer restarts): make "
                    "the directory writable. Further failures of this kind are only counted.",
                    directory,
                    self.last_checkpoint_error,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
            return
        self._checkpoint_logged.clear()  # log the next failure again
        self._refresh_digests()

    # ---- the schedule ----

    async def run(self, runtime: PeerRuntime) -> None:
        """The learning schedule: train one round's fixed budget, offer the backbone to one
        round, wait until that round is over (and its average applied or refused), repeat.

        Every round a peer takes part in, as initiator or member, thus follows exactly one
        local budget, as in the memory mode (version 1 trained on a timer, so the local work
        per round varied with timing, and rounds joined as a member came on top).

        By default the peer does not train while its round runs: the average then lands
        exactly on the model it was computed from. With ``training.overlap`` it trains its
        next budget meanwhile, and the round's change (average - contribution) is applied on
        top (nothing is lost either way; docs/config.md, training.overlap).

        A contribution no round took within WAIT_INTERVALS x round.interval_s is replaced by
        a freshly trained one: a peer without partners still learns alone.
        """
        learner = self.learner
        assert learner is not None
        cfg = runtime.config
        weight = min(self.training_samples, cfg.round.max_weight)
        max_wait_s = WAIT_INTERVALS * cfg.round.interval_s
        # With [privacy], every budget is paid for before it starts (its training and the
        # head fine-tune after its round); one that does not fit stops the schedule.
        if not self._privacy_affords_round(runtime):
            await self._stop_for_privacy(runtime)
        async with self._lock:
            vector = await self._train(learner.train_round)
        while True:
            await runtime.offer(vector, weight)
            if cfg.training.overlap:
                if not self._privacy_affords_round(runtime):
                    await runtime.until_round_over(max_wait_s)
                    await self._stop_for_privacy(runtime)
                async with self._lock:
                    await self._train(learner.trainer.train_round)
                used = await runtime.until_round_over(max_wait_s)
                async with self._lock:
                    vector = await trio.to_thread.run_sync(self.model.get_backbone)
            else:
                used = await runtime.until_round_over(max_wait_s)
                if not self._privacy_affords_round(runtime):
                    await self._stop_for_privacy(runtime)
                async with self._lock:
                    vector = await self._train(learner.train_round)
            if not used:
                log.debug("no round took this peer's contribution: trained on alone")

    async def _train(self, train_round: Callable[[], Any]) -> Any:
        """One round's budget in a worker thread; a failure of the trainer (the user's code,
        often) stops the peer with a one-line TrainerError, its traceback in the log."""
        from gossiplearn.peer.learning.data import TrainerError
        from gossiplearn.peer.learning.trainer import first_line

        try:
            result = await trio.to_thread.run_sync(train_round)
            if self._runtime is not None and self._runtime.config.privacy.enabled:
                self._save_privacy_ledger(self._runtime)
                self._update_privacy_metrics(self._runtime)
            return result
        except Exception as exc:
            log.error("training failed", exc_info=True)
            trainer = self._runtime.config.training.trainer if self._runtime else ""
            raise TrainerError(
                f"training failed in {trainer or 'the built-in trainer'} "
                f"({type(exc).__name__}: {first_line(exc)}); the traceback is in the log"
            ) from exc

    async def round_finished(
        self, runtime: PeerRuntime, result: RoundFinished
    ) -> Mapping[str, Any]:
        """Take in a finished round's average (see Learner.apply), checkpoint (every
        ``training.checkpoint_every`` rounds)."""
        learner = self.learner
        assert learner is not None

        every = runtime.config.training.checkpoint_every

        def apply() -> tuple[Any, str]:
            applied = learner.apply(result.average, result.contribution)
            self.accuracy = applied.metrics.get("accuracy")
            # Taken here, under the lock: once it is released the next budget trains this
            # backbone in a worker thread (a digest taken then was of a model mid-step).
            backbone = self.model.backbone_digest()
            if every and runtime.rounds.completed % every == 0:  # counted already
                self._checkpoint(runtime)
            if runtime.config.privacy.enabled:
                self._save_privacy_ledger(runtime)  # the head fine-tune spent budget too
            return applied, backbone

        async with self._lock:  # counted under the lock, as the learner counts it
            applied, backbone = await trio.to_thread.run_sync(apply)
            runtime.metrics.averages.labels("accepted" if applied.accepted else "refused").inc()
            runtime.metrics.accuracy.set(self.accuracy or 0.0)
            self._update_privacy_metrics(runtime)
        decision = (
            "applied"
            if applied.accepted
            else "refused (no privacy budget left for the head fine-tune)"
            if applied.refusal == "privacy"
            else f"refused ({applied.refusal}: it would hurt this peer)"
        )
        accuracy = "-" if self.accuracy is None else f"{self.accuracy:.4f}"
        return {
            "accepted": applied.accepted,
            "refusal": applied.refusal,
            "validation_loss": {"own": applied.own_loss, "average": applied.new_loss},
            "backbone_digest": backbone,
            "accuracy": self.accuracy,
            "outcome": f"finished, average {decision}: validation loss {applied.own_loss:.4f} "
            f"-> {applied.new_loss:.4f}, accuracy {accuracy}",
        }

    async def stop(self, runtime: PeerRuntime) -> None:
        async with self._lock:
            await trio.to_thread.run_sync(self._checkpoint, runtime)

    def status(self) -> Mapping[str, Any]:
        learner = self.learner
        training = self._runtime.config.training if self._runtime else None
        return {
            "model_digest": self.digests.get("model"),
            "backbone_digest": self.digests.get("backbone"),
            "head_digest": self.digests.get("head"),
            "accuracy": self.accuracy,
            "resumed_from": self.resumed_from,
            "checkpoint_failures": {
                "count": self.checkpoint_failures,
                "last_error": self.last_checkpoint_error,
            },
            "data": {
                "train_samples": self.training_samples,
                "validation_samples": self.validation_samples,
                "test_samples": self.test_samples,
            },
            "learning": {
                "averages_applied": learner.accepted if learner else 0,
                "averages_refused": learner.refused if learner else 0,
                "fell_back_to_local": learner.fell_back if learner else 0,
                "acceptance": training.acceptance if training else True,
                "tolerance": training.acceptance_tolerance if training else 0.0,
            },
            "privacy": self.privacy_status(),
        }


def split_model(cfg: PeerConfig, module: Any) -> Any:
    """``module`` split into backbone and head as the config says (``model.head_prefixes``);
    SplitModelError names model.factory."""
    from gossiplearn.peer.learning.split_model import SplitModel, SplitModelError

    try:
        return SplitModel(
            module,
            head_prefixes=cfg.model.head_prefixes or None,
            share_batchnorm_stats=cfg.model.share_batchnorm_stats,
        )
    except SplitModelError as exc:
        raise SplitModelError(
            f"model.factory {cfg.model.factory!r}: {exc} (head_prefixes: model.head_prefixes)"
        ) from exc


#: Held while torch's global generator is seeded and a model factory called (see load_learning).
MODEL_SEEDING = threading.Lock()


def load_learning(cfg: PeerConfig) -> tuple[Any, Any, Any, dict[str, float]]:
    """The peer's (SplitModel, PeerData, trainer, first test metrics) from its config:
    ``model.factory`` under ``training.seed``, ``data.loader``, ``training.trainer``, and one
    evaluation, so that a model that does not fit the data fails here, at start (or at
    ``gossiplearn init``), not in the first round. Every failure is one line naming the keys
    to check (ModelFactoryError, SplitModelError, DataLoaderError, TrainerError,
    DeviceUnavailable)."""
    import torch

    from gossiplearn.peer.learning.data import ModelFactoryError, load_datasets, resolve
    from gossiplearn.peer.learning.lean import avoid_dynamo_import
    from gossiplearn.peer.learning.trainer import (
        checked_module,
        first_evaluation,
        first_line,
        make_trainer,
    )

    avoid_dynamo_import()  # ~100 MB and seconds of start-up that a daemon never uses
    name = f"model.factory {cfg.model.factory!r}"
    factory = resolve(cfg.model.factory, "model.factory", ModelFactoryError)
    try:
        # torch's generator is global: daemons that load in threads of one process (inproc
        # mode, tests, a program running several Peers) would otherwise seed it in turn and
        # draw from each other's seeds, starting from different weights, whose average is
        # no model at all (found by a multi-label test: every average refused in half the
        # runs).
        with MODEL_SEEDING:
            torch.manual_seed(cfg.training.seed)
            module = factory(**cfg.model.options)
    except Exception as exc:
        raise ModelFactoryError(
            f"{name} failed with model.options {cfg.model.options}: "
            f"{type(exc).__name__}: {first_line(exc)}"
        ) from exc
    model = split_model(cfg, checked_module(module, name))
    data = load_datasets(cfg.data.loader, cfg.data.options)
    training = cfg.training
    trainer = make_trainer(training.trainer, model, data, cfg.train_config(), training.options)
    first = first_evaluation(
        trainer,
        name,
        f"data.loader {cfg.data.loader!r}",
        "check model.options against the data's shapes"
        + (", and training.trainer's evaluate" if training.trainer else ""),
    )
    return model, data, trainer, first
