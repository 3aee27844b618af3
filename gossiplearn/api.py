"""Your loop, our network: gossip learning inside your own PyTorch training loop.

.. code-block:: python

    import gossiplearn

    with gossiplearn.Peer("./org-a") as peer:        # identity, config, network: as `gossiplearn run`
        for step, (x, y) in enumerate(loader):
            ...; loss.backward(); optimizer.step()
            if step % 100 == 0:
                peer.sync(model)                      # share the backbone; take in finished averages

:class:`Peer` runs the same machinery as ``gossiplearn run`` (the peer directory's identity and
config, libp2p, discovery, the secure round, equivocation proofs, the status endpoint that
``gossiplearn status DIR`` reads) in a background thread; your loop owns the model, the data,
the loss, the optimizer and the device. :func:`open_peer` is the same for trio programs.

What :meth:`Peer.sync` does, without waiting on the network (at most a hand-off to the peer's
thread):

- Every round that finished since the last call is taken in: the round's change (its average
  minus the backbone this peer contributed to it) is added to the model's backbone as it is
  now, so the steps your loop took since are kept. With ``finetune_head`` (a function of the
  model that trains its head alone on your data), the head is then fitted to the new
  backbone, as the daemon fits it before judging an average. With ``validate`` (a function of
  the model returning a validation loss, lower is better), an average that leaves it worse by
  more than ``tolerance`` (measured after ``finetune_head``) is undone, head included
  (personal acceptance). Without ``finetune_head`` the head is not touched: your next steps
  adapt it, and ``validate`` judges the new backbone under the old head (which refuses most
  averages once heads have specialized).
- Unless a round is running, the model's backbone as it is now becomes this peer's
  contribution to its next round: it invites neighbours (or accepts an invitation) in the
  background. A contribution goes into one round at most, so call it after training steps.

The model's backbone and head are named as for the daemon: ``backbone`` and ``head``
attributes, or ``model.head_prefixes`` in the directory's config. The config's ``[model]``
factory and ``[data]`` loader are not used: the model and data are yours.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio

from gossiplearn.peer.config import PeerConfig, load_config
from gossiplearn.peer.net.runtime import PeerRuntime
from gossiplearn.protocol.events import RoundFinished

log = logging.getLogger("gossiplearn.api")

#: How long start-up may take before Peer() gives up (the network comes up in about a second;
#: the first import of libp2p takes most of it).
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0

Validate = Callable[[Any], float]
FinetuneHead = Callable[[Any], object]


@dataclass(frozen=True)
class SyncResult:
    """What one :meth:`Peer.sync` did."""

    applied: int  # finished rounds' averages taken in by this call
    refused: int  # ... and undone because ``validate`` got worse
    offered: bool  # the backbone as it is now became this peer's next contribution
    rounds_completed: int  # rounds this peer completed so far (this run)


@dataclass
class _Learning:
    """The runtime's view of a learning side driven by the user's calls to sync."""

    finished: queue.SimpleQueue[RoundFinished] = field(default_factory=queue.SimpleQueue)
    schema_hash: bytes | None = None
    applied: int = 0
    refused: int = 0
    validation_loss: float | None = None
    backbone_digest: str | None = None

    async def start(self, runtime: PeerRuntime) -> None:
        return None

    async def run(self, runtime: PeerRuntime) -> None:
        return None  # the user's loop is the schedule

    async def round_finished(
        self, runtime: PeerRuntime, result: RoundFinished
    ) -> Mapping[str, Any]:
        self.finished.put(result)
        return {"accepted": None, "outcome": "finished; the average is taken in at the next sync"}

    async def stop(self, runtime: PeerRuntime) -> None:
        return None

    def status(self) -> Mapping[str, Any]:
        return {
            "model_digest": None,
            "backbone_digest": self.backbone_digest,
            "accuracy": None,
            "learning": {
                "averages_applied": self.applied,
                "averages_refused": self.refused,
                "averages_waiting": self.finished.qsize(),
                "validation_loss": self.validation_loss,
                "driven_by": "gossiplearn.Peer.sync",
            },
        }


class _Syncer:
    """What sync does with the model, shared by the thread and the trio forms."""

    def __init__(
        self,
        runtime: PeerRuntime,
        learning: _Learning,
        validate: Validate | None,
        tolerance: float,
        weight: int | None,
        finetune_head: FinetuneHead | None = None,
    ) -> None:
        self.runtime = runtime
        self.learning = learning
        self.validate = validate
        self.finetune_head = finetune_head
        self.tolerance = tolerance
        self.weight = weight
        self._split: Any = None
        self._module_id: int | None = None

    def split_of(self, model: Any) -> Any:
        from gossiplearn.peer.learning.split_model import SplitModel

        module = getattr(model, "module", model)  # a SplitModel, or the torch module itself
        if self._split is None or self._module_id != id(module):
            if self._split is not None:
                raise ValueError(
                    "sync() got another model than before: give it the same model every time"
                )
            model_config = self.runtime.config.model
            self._split = (
                model
                if isinstance(model, SplitModel)
                else SplitModel(
                    module,
                    head_prefixes=model_config.head_prefixes or None,
                    share_batchnorm_stats=model_config.share_batchnorm_stats,
                )
            )
            self._module_id = id(module)
            self.learning.schema_hash = self._split.schema_hash
        return self._split

    def take_in(self, split: Any) -> tuple[int, int]:
        """Apply every finished round's change; returns (applied, refused)."""
        from gossiplearn.peer.learning.learner import landed  # torch: only once there is a model

        applied = refused = 0
        while True:
            try:
                result = self.learning.finished.get_nowait()
            except queue.Empty:
                return applied, refused
            if result.average.size != split.backbone_size:
                log.warning("a finished round's average does not fit the model: ignored")
                continue
            before = float(self.validate(split.module)) if self.validate else None
            # The whole model (head too) as it is: what a refused average goes back to.
            saved = _copy_state(split.module) if self.validate else None
            current = split.get_backbone()
            split.set_backbone(landed(result.average, current, result.contribution))
            if self.finetune_head is not None:
                self.finetune_head(split.module)
            if before is not None and self.validate is not None:
                after = float(self.validate(split.module))
                self.learning.validation_loss = after
                if not after <= before + self.tolerance * abs(before):
                    split.module.load_state_dict(saved)  # in place: optimizers keep their tensors
                    refused += 1
                    self.runtime.metrics.averages.labels("refused").inc()
                    continue
            applied += 1
            self.runtime.metrics.averages.labels("accepted").inc()

    def contribution(self, split: Any) -> tuple[np.ndarray, int] | None:
        """The backbone to offer now, or None while a round runs or results wait."""
        view = self.runtime.engine.view
        if view.busy or self.learning.finished.qsize():
            return None
        weight = self.weight or self.runtime.config.round.max_weight
        return split.get_backbone(), min(weight, self.runtime.config.round.max_weight)

    def result(self, applied: int, refused: int, offered: bool) -> SyncResult:
        self.learning.applied += applied
        self.learning.refused += refused
        if applied or refused:
            self.learning.backbone_digest = self._split.backbone_digest()
        return SyncResult(applied, refused, offered, self.runtime.rounds.completed)


def _copy_state(module: Any) -> dict[str, Any]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def _unwrap(error: BaseException) -> BaseException:
    """The one error inside nested single-error groups (trio wraps a task's error)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _file_logging(directory: Path, config: PeerConfig) -> logging.Handler | None:
    """The peer's log file (``logging.file``) for gossiplearn's and libp2p's loggers, and
    nowhere else while the peer runs (see gossiplearn/peer/logfile.py); the rest of the
    program's logging setup is left alone."""
    from gossiplearn.peer import logfile

    handler = logfile.attach(directory / config.logging.file, config.logging.level)
    if handler is None:
        log.warning("cannot write %s: logging to it is off", directory / config.logging.file)
    return handler


class Peer:
    """A gossiplearn peer for the directory ``DIR`` (made by ``gossiplearn init``), run in a
    background thread while your loop trains. Use it as a context manager.

    ``finetune_head``: a function of your model that trains its head alone on your data (a
    few hundred steps, or a closed-form fit), called in :meth:`sync` after an average is added
    to the backbone: what the daemon does before it judges an average.
    ``validate``: a function of your model returning its validation loss (lower is better);
    with it, an average that raises it by more than ``tolerance`` (relative), measured after
    ``finetune_head``, is undone (backbone and head).
    ``weight``: this peer's averaging weight when the network weighs by samples
    (``round.max_weight`` above 1), capped there; default the cap (equal weights at 1).

    Raises, from ``__enter__``: ConfigError (the config), IdentityError (the key file),
    StartError (the directory is used by another peer, a port is taken), each with a one-line
    message naming the cause and the fix; TimeoutError if the network is not up within
    START_TIMEOUT_S.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        validate: Validate | None = None,
        tolerance: float = 0.02,
        weight: int | None = None,
        config: PeerConfig | None = None,
        finetune_head: FinetuneHead | None = None,
    ) -> None:
        self.directory = Path(directory)
        self._config = config or load_config(self.directory)
        self._learning = _Learning()
        self.runtime = PeerRuntime(self.directory, self._config, learning=self._learning)
        self._syncer = _Syncer(
            self.runtime, self._learning, validate, tolerance, weight, finetune_head
        )
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._handler: logging.Handler | None = None

    # ---- lifetime ----

    def __enter__(self) -> Peer:
        self._handler = _file_logging(self.directory, self._config)
        self._thread = threading.Thread(target=self._main, name="gossiplearn-peer", daemon=True)
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_S):
            raise TimeoutError(
                f"the peer for {self.directory} did not start in {START_TIMEOUT_S} s"
            )
        if self._error is not None:
            self._close_logging()
            raise self._error
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the peer (ABORT to a running round's members), within STOP_TIMEOUT_S."""
        thread, token, stop = self._thread, self._token, self._stop
        if thread is None:
            return
        if token is not None and stop is not None and thread.is_alive():
            with contextlib.suppress(trio.RunFinishedError):  # it ended by itself
                trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join(STOP_TIMEOUT_S)
        self._thread = None
        self._close_logging()
        if self._error is not None and not isinstance(self._error, trio.Cancelled):
            error, self._error = self._error, None
            raise error

    def _close_logging(self) -> None:
        from gossiplearn.peer import logfile

        logfile.detach(self._handler)
        self._handler = None

    def _main(self) -> None:
        async def serve() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.runtime.run, self._stop)
                while not self.runtime.ready:
                    await trio.sleep(0.02)
                self._started.set()

        try:
            trio.run(serve)
        except BaseException as exc:  # handed to the user's thread
            self._error = _unwrap(exc)
        finally:
            self._started.set()

    # ---- the loop's calls ----

    def sync(self, model: Any) -> SyncResult:
        """Take in finished rounds' averages and offer the backbone as it is now (see the
        module's documentation). Raises RuntimeError if the peer stopped (with its cause)."""
        self._check_running()
        split = self._syncer.split_of(model)
        applied, refused = self._syncer.take_in(split)
        offer = self._syncer.contribution(split)
        if offer is not None:
            assert self._token is not None
            trio.from_thread.run(self.runtime.offer, *offer, trio_token=self._token)
        return self._syncer.result(applied, refused, offer is not None)

    def status(self) -> dict[str, Any]:
        """The status document (as ``gossiplearn status DIR --json`` prints it)."""
        self._check_running()
        assert self._token is not None
        return trio.from_thread.run_sync(self.runtime.status_document, trio_token=self._token)

    def _check_running(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            cause = f": {self._error!r}" if self._error else ""
            raise RuntimeError(f"the peer for {self.directory} is not running{cause}")


class AsyncPeer:
    """The trio form of :class:`Peer`, from :func:`open_peer`."""

    def __init__(self, runtime: PeerRuntime, syncer: _Syncer) -> None:
        self.runtime = runtime
        self._syncer = syncer

    async def sync(self, model: Any) -> SyncResult:
        split = self._syncer.split_of(model)
        applied, refused = self._syncer.take_in(split)
        offer = self._syncer.contribution(split)
        if offer is not None:
            await self.runtime.offer(*offer)
        return self._syncer.result(applied, refused, offer is not None)

    def status(self) -> dict[str, Any]:
        return self.runtime.status_document()


@asynccontextmanager
async def open_peer(
    directory: str | Path,
    *,
    validate: Validate | None = None,
    tolerance: float = 0.02,
    weight: int | None = None,
    config: PeerConfig | None = None,
    finetune_head: FinetuneHead | None = None,
) -> AsyncIterator[AsyncPeer]:
    """``async with open_peer(DIR) as peer: ... await peer.sync(model)``: a peer in the current
    trio run (see :class:`Peer` for the arguments and what it raises)."""
    directory = Path(directory)
    config = config or load_config(directory)
    learning = _Learning()
    runtime = PeerRuntime(directory, config, learning=learning)
    stop = trio.Event()
    handler = _file_logging(directory, config)
    try:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(runtime.run, stop)
                with trio.fail_after(START_TIMEOUT_S):
                    while not runtime.ready:
                        await trio.sleep(0.02)
                try:
                    yield AsyncPeer(
                        runtime,
                        _Syncer(runtime, learning, validate, tolerance, weight, finetune_head),
                    )
                finally:
                    stop.set()
        except BaseExceptionGroup as group:
            raise _unwrap(group) from None
    finally:
        from gossiplearn.peer import logfile

        logfile.detach(handler)


__all__ = ["AsyncPeer", "Peer", "SyncResult", "open_peer"]
