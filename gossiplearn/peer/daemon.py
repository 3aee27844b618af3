"""The peer daemon: one organization's long-running peer.

It loads its identity, config, model and private data, resumes from its last checkpoint, and
then, until SIGINT/SIGTERM, alternates local training with secure averaging rounds: it
invites random live neighbours now and then, answers invitations otherwise, and after every
successful round sets its backbone to the group's average, fine-tunes its personal head and
evaluates on its own held-out data. It serves its status on 127.0.0.1 and to admitted peers.

On a stop signal it aborts the current round (ABORT sent), writes a checkpoint, closes the
host and returns, well within 5 seconds.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import random
import signal
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from gossiplearn import __version__
from gossiplearn.crypto.identity import (
    load_key_file,
    peer_id_from_public_key,
    public_key_from_peer_id,
)
from gossiplearn.peer.config import CHECKPOINT_DIR, IDENTITY_FILE, PeerConfig, load_config
from gossiplearn.peer.discovery import Discovery
from gossiplearn.peer.engine import RoundEngine
from gossiplearn.peer.host import (
    PEERS_PROTOCOL,
    PING_PROTOCOL,
    ROUND_PROTOCOL,
    STATUS_PROTOCOL,
    Admission,
    Host,
)
from gossiplearn.peer.neighbours import NeighbourTable
from gossiplearn.peer.proofs import EVIDENCE_DIR, ProofStore
from gossiplearn.peer.status import (
    STATUS_SCHEMA_VERSION,
    Metrics,
    process_figures,
    serve_status,
    trio_task_count,
)
from gossiplearn.protocol import (
    ReplayGuard,
    SequenceCounter,
    Status,
    encode_envelope,
    sequence_start,
)
from gossiplearn.protocol.events import (
    Action,
    EquivocationDetected,
    MessageRefused,
    RoundAborted,
    RoundCancelled,
    RoundFinished,
)
from gossiplearn.protocol.evidence import InvalidProof
from gossiplearn.protocol.node import Node

log = logging.getLogger("gossiplearn.peer")

STOP_BUDGET_S = 4.0  # the whole stop (abort, checkpoint, close) fits in the 5 s promise
EVIDENCE_POLL_S = 2.0  # how soon an operator's `gossiplearn evidence --clear` takes effect
HISTORY = 256  # finished rounds kept for the status document


@dataclass
class RoundLog:
    completed: int = 0
    aborted: int = 0
    cancelled: int = 0
    abort_reasons: Counter[str] = field(default_factory=Counter)
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY))

    @property
    def last(self) -> dict[str, Any] | None:
        return self.history[-1] if self.history else None


class Peer:
    """A peer daemon for the directory ``DIR`` made by ``gossiplearn init``."""

    def __init__(
        self,
        directory: Path,
        config: PeerConfig | None = None,
        *,
        node_factory: Callable[..., Node] = Node,
    ) -> None:
        """``node_factory`` builds the round machine (tests put an adversary here)."""
        self.directory = Path(directory)
        self._node_factory = node_factory
        self.config = config or load_config(self.directory)
        self.identity = load_key_file(self.directory / IDENTITY_FILE)
        self.peer_id = self.identity.peer_id
        peer = self.config.peer
        self.admission = Admission(
            (public_key_from_peer_id(p) for p in peer.allow), open_to_all=peer.admission == "open"
        )
        self.metrics = Metrics()
        self.rounds = RoundLog()
        self.started = time.time()
        self.accuracy: float | None = None
        self.digests: dict[str, str] = {}
        self.rejected: Counter[str] = Counter()
        self.training_samples = 0
        self.validation_samples = 0
        self.status_port: int | None = None
        self.ready = False  # True once serving: status_document() is then complete
        #: The checkpoint this run started from (None: a fresh model), for status and churn tests.
        self.resumed_from: dict[str, Any] | None = None
        self._model_lock = trio.Lock()
        self._stopping = False
        self._rng = random.Random(os.urandom(8))
        self.proofs = ProofStore(self.directory / EVIDENCE_DIR)
        self._refused_on_disk: set[bytes] = set()
        self._other_versions: set[bytes | None] = set()  # peers told about once in the log

    # ---- set-up (CPU work, run in a thread) ----

    def _load_model_and_data(self) -> None:
        import torch

        from gossiplearn.peer.checkpoint import CheckpointMeta, load_checkpoint
        from gossiplearn.peer.data import load_datasets, resolve
        from gossiplearn.peer.model import SplitModel
        from gossiplearn.peer.trainer import TrainConfig, Trainer

        cfg = self.config
        torch.manual_seed(cfg.training.seed)
        module = resolve(cfg.model.factory)(**cfg.model.options)
        self.model = SplitModel(
            module,
            head_prefixes=cfg.model.head_prefixes or None,
            share_batchnorm_stats=cfg.model.share_batchnorm_stats,
        )
        train, validation = load_datasets(cfg.data.loader, cfg.data.options)
        # The config's training section is TrainConfig's fields plus `threads` (set in run()).
        train_config = TrainConfig(
            **{f.name: getattr(cfg.training, f.name) for f in dataclasses.fields(TrainConfig)}
        )
        self.trainer = Trainer(self.model, train, validation, train_config)
        self.training_samples = self.trainer.num_train_samples
        self.validation_samples = len(validation)  # type: ignore[arg-type]
        loaded = load_checkpoint(self.directory / CHECKPOINT_DIR, self.model)
        if loaded is not None:
            self.resumed_from = {
                "rounds_completed": loaded.rounds_completed,
                "model_digest": loaded.model_digest,
                "saved_at": loaded.saved_at,
            }
        meta = loaded or CheckpointMeta()
        self.rounds.completed = meta.rounds_completed
        self.rounds.aborted = meta.rounds_aborted
        self.accuracy = meta.metrics.get("accuracy")
        self._refresh_digests()
        if self.accuracy is None:
            self.accuracy = self.trainer.evaluate()["accuracy"]
        self.metrics.accuracy.set(self.accuracy)

    def _refresh_digests(self) -> None:
        self.digests = {
            "model": self.model.model_digest(),
            "backbone": self.model.backbone_digest(),
            "head": self.model.head_digest(),
        }

    def _checkpoint(self) -> None:
        from gossiplearn.peer.checkpoint import CheckpointMeta, save_checkpoint

        meta = CheckpointMeta(
            rounds_completed=self.rounds.completed,
            rounds_aborted=self.rounds.aborted,
            metrics={"accuracy": self.accuracy} if self.accuracy is not None else {},
        )
        save_checkpoint(self.directory / CHECKPOINT_DIR, self.model, meta)
        self._refresh_digests()

    # ---- running ----

    async def run(self, stop: trio.Event | None = None) -> None:
        """Run until SIGINT/SIGTERM, or until ``stop`` is set if given (several peers in one
        process); always checkpoints and closes the host."""
        import torch

        torch.set_num_threads(max(1, self.config.training.threads))
        await trio.to_thread.run_sync(self._load_model_and_data)
        cfg = self.config
        if cfg.peer.admission == "open":
            log.warning("admission is OPEN: any peer may connect and join rounds (demo mode)")
        self.node = self._node_factory(
            self.identity,
            cfg.round.to_round_config(),
            admitted=self.admission,
            now_ms=int(time.time() * 1000),
        )
        self.host = Host(
            self.identity,
            cfg.peer.listen,
            self.admission,
            enable_mdns=cfg.discovery.mdns,
            on_rejected=self._count_rejected,
        )
        self.table = NeighbourTable(
            self.identity.public_key,
            cfg.discovery.max_neighbours,
            cfg.discovery.neighbour_timeout_s,
        )
        self._sequence = SequenceCounter(sequence_start(int(time.time() * 1000)))
        self._replay = ReplayGuard()
        self.discovery = Discovery(
            self.host,
            self.table,
            self.admission,
            self.identity,
            bootstrap=cfg.peer.bootstrap,
            ping_interval_s=cfg.discovery.ping_interval_s,
            peer_exchange=cfg.discovery.peer_exchange,
            replay=self._replay,
            sequence=self._sequence,
            on_rejected=self._count_rejected,
        )
        self.engine = RoundEngine(
            self.host, self.node, self._on_action, on_unreachable=self._peer_unreachable
        )
        self.host.disconnect_listeners.append(self.engine.peer_disconnected)
        for stored in await trio.to_thread.run_sync(self.proofs.load):
            # Before the engine runs: nothing else touches the machine yet.
            self.node.accept_proof(stored.proof)
            self._refused_on_disk.add(stored.peer)
            log.warning(
                "refusing %s: it equivocated (proof in %s); clear with `gossiplearn evidence "
                "%s --clear %s`",
                peer_id_from_public_key(stored.peer),
                stored.path,
                self.directory,
                peer_id_from_public_key(stored.peer),
            )
        self.host.handle(ROUND_PROTOCOL, self._handle_round)
        self.host.handle(PING_PROTOCOL, self.discovery.handle_ping)
        self.host.handle(PEERS_PROTOCOL, self.discovery.handle_peers)
        self.host.handle(STATUS_PROTOCOL, self._handle_status)

        async with self.host.run(), trio.open_nursery() as nursery:
            self._nursery = nursery
            self.status_port = await nursery.start(
                serve_status, cfg.status.port, self.status_document, self._render_metrics
            )
            log.info(
                "peer %s listening on %s; status on http://127.0.0.1:%d/status",
                self.peer_id,
                ", ".join(self.host.addrs()),
                self.status_port,
            )
            nursery.start_soon(self.engine.run)
            nursery.start_soon(self.discovery.run)
            nursery.start_soon(self._training_loop)
            nursery.start_soon(self._watch_evidence)
            self.ready = True
            if stop is None:
                await self._wait_for_stop_signal()
            else:
                await stop.wait()
            await self._stop(nursery)
        log.info("peer %s stopped", self.peer_id)

    async def _wait_for_stop_signal(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("received %s: stopping", signal.Signals(signum).name)
                return

    async def _stop(self, nursery: trio.Nursery) -> None:
        self._stopping = True
        with trio.move_on_after(STOP_BUDGET_S):
            await self.engine.abort("peer_stopping", timeout_s=1.0)
            async with self._model_lock:
                await trio.to_thread.run_sync(self._checkpoint)
        nursery.cancel_scope.cancel()

    # ---- training and gossip ----

    async def _training_loop(self) -> None:
        """Train locally, publish the new backbone, and now and then invite neighbours."""
        cfg = self.config
        interval = cfg.round.interval_s
        while not self._stopping:
            async with self._model_lock:
                await trio.to_thread.run_sync(self.trainer.train_local)
                vector = await trio.to_thread.run_sync(self.model.get_backbone)
            await self.engine.set_contribution(
                vector, min(self.training_samples, cfg.round.max_weight), self.model.schema_hash
            )
            await trio.sleep(interval * self._rng.uniform(0.5, 1.5))
            live = [n.key for n in self.table.live(time.monotonic())]
            if len(live) >= 2 and not self.engine.view.busy:
                await self.engine.start_round(live)

    def _peer_unreachable(self, key: bytes) -> None:
        # Not invited again until it answers a ping (or reaches us) again.
        self.table.failed(key, time.monotonic())

    def _count_rejected(self, reason: str) -> None:
        self.rejected[reason] += 1
        self.metrics.rejected_messages.labels(reason).inc()

    def _on_action(self, action: Action) -> None:
        if isinstance(action, MessageRefused):
            self._count_rejected(action.reason)
            if action.reason == "version" and action.sender not in self._other_versions:
                self._other_versions.add(action.sender)
                log.warning(
                    "peer %s speaks another protocol version (%s); it must run the same "
                    "gossiplearn version as this peer to join rounds",
                    "?" if action.sender is None else peer_id_from_public_key(action.sender),
                    action.detail,
                )
            if action.sender is not None and action.sender in self.admission:
                self.discovery.inbound(action.sender)
        elif isinstance(action, EquivocationDetected):
            self._nursery.start_soon(self._keep_proof, action)
        elif isinstance(action, RoundFinished):
            self._nursery.start_soon(self._apply_round, action)
        elif isinstance(action, RoundAborted):
            self.rounds.aborted += 1
            self.rounds.abort_reasons[action.reason] += 1
            self.metrics.rounds.labels("aborted").inc()
            self.metrics.round_aborts.labels(action.reason).inc()
            blamed = ",".join(peer_id_from_public_key(b)[-6:] for b in action.blamed)
            self._log_round(
                action.stats, f"aborted ({action.reason}{'; blamed ' + blamed if blamed else ''})"
            )
        elif isinstance(action, RoundCancelled):
            self.rounds.cancelled += 1
            self.metrics.rounds.labels("cancelled").inc()
            log.debug("round %s cancelled: %s", action.group.hex()[:8], action.reason)

    async def _keep_proof(self, action: EquivocationDetected) -> None:
        """Keep a proof that ``action.peer`` equivocated; the machine already refuses it."""
        peer_id = peer_id_from_public_key(action.peer)
        self.metrics.equivocations.inc()
        try:
            stored = await trio.to_thread.run_sync(self.proofs.save, action.proof)
        except (OSError, InvalidProof) as exc:
            log.error("peer %s equivocated, but its proof could not be kept: %s", peer_id, exc)
            return
        self._refused_on_disk.add(action.peer)
        log.warning(
            "peer %s equivocated in round %s (signed two conflicting messages): refused until "
            "an operator clears it with `gossiplearn evidence %s --clear %s`; proof: %s",
            peer_id,
            action.group.hex()[:8],
            self.directory,
            peer_id,
            stored.path,
        )

    async def _watch_evidence(self) -> None:
        """Lift the refusal of peers whose proofs an operator deleted (`evidence --clear`)."""
        while not self._stopping:
            await trio.sleep(EVIDENCE_POLL_S)
            known = set(self._refused_on_disk)  # proofs kept meanwhile are checked next time
            cleared = known - await trio.to_thread.run_sync(self.proofs.peers)
            for peer in cleared:
                await self.engine.call(functools.partial(Node.clear_refusal, peer=peer))
                log.info("refusal of %s cleared by the operator", peer_id_from_public_key(peer))
            self._refused_on_disk -= cleared

    async def _apply_round(self, result: RoundFinished) -> None:
        mix = self.config.round.mix

        def apply() -> str:
            self.model.set_backbone(result.average, mix=mix)
            applied = self.model.backbone_digest()
            self.trainer.finetune_head()
            self.accuracy = self.trainer.evaluate()["accuracy"]
            self.rounds.completed += 1
            self._checkpoint()
            return applied

        async with self._model_lock:
            backbone_digest = await trio.to_thread.run_sync(apply)
        stats = result.stats
        self.metrics.rounds.labels("finished").inc()
        self.metrics.round_seconds.observe(stats.seconds)
        self.metrics.round_bytes_sent.inc(stats.bytes_sent)
        self.metrics.accuracy.set(self.accuracy or 0.0)
        self.rounds.history.append(
            {
                "group": result.group.hex(),
                "members": [peer_id_from_public_key(m) for m in result.members],
                "role": stats.role,
                "seconds": stats.seconds,
                "bytes_sent": stats.bytes_sent,
                "bytes_received": stats.bytes_received,
                "finished_at": time.time(),
                "backbone_digest": backbone_digest,
                "accuracy": self.accuracy,
                "clipped": stats.clipped,
            }
        )
        self._log_round(stats, f"finished, accuracy {self.accuracy:.4f}")

    def _log_round(self, stats: Any, outcome: str) -> None:
        members = ",".join(peer_id_from_public_key(m)[-6:] for m in stats.members) or "-"
        log.info(
            "round %s members=%s role=%s sent=%dB received=%dB %.2fs %s",
            stats.group.hex()[:8],
            members,
            stats.role,
            stats.bytes_sent,
            stats.bytes_received,
            stats.seconds,
            outcome,
        )

    # ---- protocol handlers ----

    async def _handle_round(self, key: bytes, stream: object) -> None:
        self.discovery.inbound(key)
        await self.engine.handle_stream(key, stream)

    async def _handle_status(self, key: bytes, stream: object) -> None:
        frame = await self.host.receive_frame(key, stream, 64 * 1024)
        if frame is None:
            return
        request = self.discovery.open_envelope(key, frame)
        if request is None:
            return
        if not isinstance(request.body, Status):
            self._count_rejected("unexpected_type")
            return
        reply = encode_envelope(
            self.identity,
            self.identity.public_key,
            key,
            Status(json.dumps(self.remote_status_document(key))),
            seq=self._sequence(),
            ts=int(time.time() * 1000),
        )
        await self.host.send_frame(key, stream, reply)  # the host closes the stream after us

    # ---- status ----

    def status_document(self) -> dict[str, Any]:
        now = time.monotonic()
        counters = self.host.counters
        neighbours = []
        for n in self.table.all():
            neighbours.append(
                {
                    "peer_id": n.peer_id,
                    "addrs": n.addrs,
                    "live": self.table.is_live(n, now),
                    "rtt_ms": None if n.rtt_ms is None else round(n.rtt_ms, 3),
                    "last_seen_s": None if n.last_seen is None else round(now - n.last_seen, 3),
                    "source": n.source,
                    "failures": n.failures,
                    "bytes_in": counters.bytes_in.get(n.key, 0),
                    "bytes_out": counters.bytes_out.get(n.key, 0),
                }
            )
        return {
            "schema": STATUS_SCHEMA_VERSION,
            "version": __version__,
            "peer_id": self.peer_id,
            "addrs": self.host.addrs(),
            "uptime_s": round(time.time() - self.started, 3),
            "neighbours": neighbours,
            "rounds": {
                "completed": self.rounds.completed,
                "aborted": self.rounds.aborted,
                "cancelled": self.rounds.cancelled,
                "abort_reasons": dict(self.rounds.abort_reasons),
                "in_progress": self.engine.view.busy,
                "current": self._current_round(),
                "last": self.rounds.last,
                "history": list(self.rounds.history),
            },
            "refused_connections": counters.refused_connections + counters.refused_streams,
            "rejected_messages": dict(self.rejected),
            "model_digest": self.digests.get("model"),
            "backbone_digest": self.digests.get("backbone"),
            "head_digest": self.digests.get("head"),
            "accuracy": self.accuracy,
            "resumed_from": self.resumed_from,
            "process": process_figures(),
            "data": {
                "train_samples": self.training_samples,
                "validation_samples": self.validation_samples,
            },
            "contribution_fresh": self.engine.view.contribution_fresh,
            "blocked_peers": {
                peer_id_from_public_key(peer): state
                for peer, state in self.engine.view.blocked.items()
            },
        }

    def remote_status_document(self, requester: bytes) -> dict[str, Any]:
        """What an admitted peer may learn by asking: less than the local document. No sample
        counts or weights (a member's weight is its sample count when weighting is on), no
        neighbours, and only the rounds the requester was itself a member of."""
        full = self.status_document()
        rounds = full["rounds"]
        shared = [entry for entry in rounds["history"] if self._was_member(entry, requester)]
        return {
            "schema": full["schema"],
            "remote": True,
            "version": full["version"],
            "peer_id": full["peer_id"],
            "addrs": full["addrs"],
            "uptime_s": full["uptime_s"],
            "rounds": {
                "completed": rounds["completed"],
                "aborted": rounds["aborted"],
                "cancelled": rounds["cancelled"],
                "in_progress": rounds["in_progress"],
                "with_you": shared,
            },
            "model_digest": full["model_digest"],
        }

    @staticmethod
    def _was_member(entry: dict[str, Any], requester: bytes) -> bool:
        return peer_id_from_public_key(requester) in entry.get("members", ())

    def _current_round(self) -> dict[str, Any] | None:
        current = self.engine.view.current_round
        if current is None:
            return None
        group, started_ms, deadline_ms = current
        now_ms = time.time() * 1000
        return {
            "group": group.hex(),
            "age_s": round((now_ms - started_ms) / 1000, 3),
            "deadline_in_s": round((deadline_ms - now_ms) / 1000, 3),
        }

    def _render_metrics(self) -> bytes:
        counters = self.host.counters
        self.metrics.refused_connections.set(
            counters.refused_connections + counters.refused_streams
        )
        self.metrics.neighbours_live.set(len(self.table.live(time.monotonic())))
        self.metrics.uptime.set(time.time() - self.started)
        self.metrics.trio_tasks.set(trio_task_count() or 0)
        blocked = self.engine.view.blocked.values()
        refused = sum(1 for state in blocked if state["refused"])
        self.metrics.blocked_peers.labels("refused").set(refused)
        self.metrics.blocked_peers.labels("backoff").set(len(blocked) - refused)
        return self.metrics.render()
