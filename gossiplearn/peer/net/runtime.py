"""A peer's network side: identity, config, admission, discovery, the round engine, status.

:class:`PeerRuntime` is the machinery every peer runs, whoever trains its model: the daemon of
``gossiplearn run`` (peer/daemon.py, with the built-in learning loop) and the Python API
(``gossiplearn.Peer``, with the user's own loop) are a runtime plus a :class:`Learning`, the
side that owns the model. The runtime holds the directory lock, listens, finds neighbours,
invites them now and then while this peer has a contribution no round has taken yet, answers
invitations, keeps equivocation proofs, serves the status (local HTTP, and a smaller document
to admitted peers), and tells the learning side when a round finished.

Operator-facing rules: one peer per directory (an exclusive lock, :mod:`dirlock`); a start
that cannot work (directory in use, a port taken) raises :class:`StartError` with one line
naming the cause and the fix; whatever keeps the peer from starting rounds (too few live
neighbours, a neighbour's clock or model, a bootstrap address answering with another peer id)
is logged once per cause and listed under ``waiting`` in the status (worked out in
waiting.py; the status document itself is assembled in status_document.py).

On stop it aborts the current round (ABORT sent), lets the learning side save its state,
closes the host and returns, well within 5 seconds.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import signal
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import trio

from gossiplearn.crypto.identity import (
    load_key_file,
    peer_id_from_public_key,
    public_key_from_peer_id,
)
from gossiplearn.peer.config import CONFIG_FILE, IDENTITY_FILE, PeerConfig, load_config
from gossiplearn.peer.dirlock import DirectoryLock
from gossiplearn.peer.evidence_store import EVIDENCE_DIR, ProofStore
from gossiplearn.peer.net import status_document
from gossiplearn.peer.net.discovery import Discovery
from gossiplearn.peer.net.engine import RoundEngine
from gossiplearn.peer.net.host import (
    PEERS_PROTOCOL,
    PING_PROTOCOL,
    ROUND_PROTOCOL,
    STATUS_PROTOCOL,
    Admission,
    Host,
    ListenError,
)
from gossiplearn.peer.net.neighbours import NeighbourTable, short_id
from gossiplearn.peer.net.waiting import (
    CLOCK_TOLERANCE_MS,
    MIN_INVITABLE,
    WATCH_S,
    Waiting,
    WaitingWatch,
)
from gossiplearn.peer.status import Metrics, open_status_listeners, remote_view, serve_status
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
    PeerSuspected,
    RoundAborted,
    RoundCancelled,
    RoundFinished,
)
from gossiplearn.protocol.evidence import InvalidProof
from gossiplearn.protocol.node import Node

log = logging.getLogger("gossiplearn.peer")

STOP_BUDGET_S = 4.0  # the whole stop (abort, checkpoint, close) fits in the 5 s promise
EVIDENCE_POLL_S = 2.0  # how soon an operator's `gossiplearn evidence --clear` takes effect
#: After a round of its own failed, a peer invites again after this share of round.interval_s.
RETRY_FRACTION = 0.1
HISTORY = 256  # finished rounds kept for the status document


class StartError(RuntimeError):
    """The daemon cannot start; the message names the cause and the fix, in one line."""


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


class Learning(Protocol):
    """The side of a peer that owns its model, as the runtime sees it."""

    @property
    def schema_hash(self) -> bytes | None:
        """The backbone's layout (None until known): neighbours on another one are not
        invited."""
        ...

    async def start(self, runtime: PeerRuntime) -> None:
        """Before the network starts: load what it needs (in a worker thread if slow)."""
        ...

    async def run(self, runtime: PeerRuntime) -> None:
        """While the peer runs (in the runtime's nursery): e.g. the training loop."""
        ...

    async def round_finished(
        self, runtime: PeerRuntime, result: RoundFinished
    ) -> Mapping[str, Any]:
        """Take in a finished round; returns fields for its status history entry."""
        ...

    async def stop(self, runtime: PeerRuntime) -> None:
        """The peer is stopping: save what must survive (bounded by the stop budget)."""
        ...

    def status(self) -> Mapping[str, Any]:
        """Keys of the status document the learning side knows (accuracy, data, ...)."""
        ...


class PeerRuntime:
    """The network side of the peer in directory ``DIR`` (made by ``gossiplearn init``)."""

    def __init__(
        self,
        directory: Path,
        config: PeerConfig | None = None,
        *,
        learning: Learning,
        node_factory: Callable[..., Node] = Node,
    ) -> None:
        """``node_factory`` builds the round machine (tests put an adversary here)."""
        self.directory = Path(directory)
        self.learning = learning
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
        self.rejected: Counter[str] = Counter()
        self.status_port: int | None = None
        self.ready = False  # True once serving: status_document() is then complete
        #: Why rounds cannot start now (see waiting.py); refreshed every WATCH_S.
        self.waiting: list[Waiting] = []
        self._waiting_watch = WaitingWatch(self.directory / CONFIG_FILE)
        self._round_over = trio.Event()  # set when a round ends (and its result is applied)
        self._round_failed = trio.Event()  # set when a round ends without an average
        self._applying = 0  # finished rounds whose average is being applied
        self._stopping = False
        self._rng = random.Random(os.urandom(8))
        self.proofs = ProofStore(self.directory / EVIDENCE_DIR)
        self._refused_on_disk: set[bytes] = set()
        self._other_versions: set[bytes | None] = set()  # peers told about once in the log

    # ---- running ----

    async def run(self, stop: trio.Event | None = None) -> None:
        """Run until SIGINT/SIGTERM, or until ``stop`` is set if given (several peers in one
        process); always checkpoints and closes the host. Raises StartError (one line: the
        cause and the fix) if the directory is in use or a port is taken."""
        with DirectoryLock(self.directory):
            await self._run(stop)

    async def _run(self, stop: trio.Event | None) -> None:
        await self.learning.start(self)
        cfg = self.config
        config_path = self.directory / CONFIG_FILE
        if cfg.peer.admission == "open":
            log.warning("admission is OPEN: any peer may connect and join rounds (demo mode)")
        try:
            status_listeners = await open_status_listeners(cfg.status.port)
        except OSError as exc:
            raise StartError(
                f"cannot serve the status on 127.0.0.1:{cfg.status.port} ({exc.strerror or exc}"
                f"): stop what uses that port, or set status.port in {config_path} to a free "
                "port (0 picks one)"
            ) from None
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
            failed_admissions_per_minute=cfg.peer.failed_admissions_per_minute,
            announce=cfg.peer.announce,
            relays=cfg.peer.relays,
            relay_service=cfg.peer.relay_service,
        )
        self.table = NeighbourTable(
            self.identity.public_key,
            cfg.discovery.max_neighbours,
            cfg.discovery.neighbour_timeout_s,
            clock_tolerance_ms=CLOCK_TOLERANCE_MS,
            schema_hash=self.learning.schema_hash,
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
            schema_hash=lambda: self.learning.schema_hash or b"",
            on_problem=self._waiting_watch.dial_problem,
        )
        self.engine = RoundEngine(
            self.host,
            self.node,
            self._on_action,
            on_unreachable=self._peer_unreachable,
            bulk_port=None if cfg.peer.bulk_port < 0 else cfg.peer.bulk_port,
            serve_bulk=self.host.accepts_connections(),
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

        try:
            async with self.host.run(), trio.open_nursery() as nursery:
                self._nursery = nursery
                self.status_port = await nursery.start(
                    functools.partial(
                        serve_status,
                        cfg.status.port,
                        self.status_document,
                        self._render_metrics,
                        listeners=status_listeners,
                        refused=self.metrics.status_refused,
                    )
                )
                log.info(
                    "peer %s listening on %s; status on http://127.0.0.1:%d/status",
                    self.peer_id,
                    ", ".join(self.host.addrs()),
                    self.status_port,
                )
                nursery.start_soon(self.engine.run)
                nursery.start_soon(self.discovery.run)
                nursery.start_soon(self.learning.run, self)
                nursery.start_soon(self._inviting_loop)
                nursery.start_soon(self._watch)
                nursery.start_soon(self._watch_evidence)
                self.ready = True
                if stop is None:
                    await self._wait_for_stop_signal()
                else:
                    await stop.wait()
                await self._stop(nursery)
        except ListenError as exc:
            for listener in status_listeners:
                await listener.aclose()
            raise StartError(
                f"{exc}: stop what uses it, or change peer.listen in {config_path}"
            ) from None
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
            await self.learning.stop(self)
        nursery.cancel_scope.cancel()

    # ---- training and gossip ----

    @property
    def averages_pending(self) -> int:
        """Finished rounds whose result the learning side is still taking in."""
        return self._applying

    async def offer(self, vector: np.ndarray, weight: int) -> None:
        """Contribute ``vector`` (the backbone, float32) with ``weight`` to this peer's next
        round: it invites neighbours (and accepts invitations) until a round takes it."""
        schema = self.learning.schema_hash
        if schema is None:
            raise RuntimeError("the learning side has no backbone schema yet")
        if self.table.schema_hash != schema:
            self.table.schema_hash = schema
        self._round_over = trio.Event()
        await self.engine.set_contribution(vector, weight, schema)

    async def until_round_over(self, timeout_s: float) -> bool:
        """Until the offered contribution went into a round and that round is over (its
        result taken in, if it finished); False if none took it within ``timeout_s``."""
        return await self._until_round_over(timeout_s)

    async def _until_round_over(self, timeout_s: float) -> bool:
        """Until the current contribution went into a round and that round is over (applied,
        if it finished); False if none took it within ``timeout_s``."""
        with trio.move_on_after(timeout_s):
            while True:
                await self._round_over.wait()
                self._round_over = trio.Event()
                view = self.engine.view
                if not view.contribution_fresh and not view.busy and not self._applying:
                    return True
        return False

    async def _inviting_loop(self) -> None:
        """Now and then (every round.interval_s, randomized), invite invitable neighbours,
        when this peer has a contribution no round has taken yet and is in no group. After a
        round of its own that failed (aborted or cancelled), it tries again after a tenth of
        the interval: the interval paces the rounds that work, not the retries of one an
        insider or a busy neighbour spoiled."""
        interval = self.config.round.interval_s
        while not self._stopping:
            with trio.move_on_after(interval * self._rng.uniform(0.5, 1.5)):
                await self._round_failed.wait()
                await trio.sleep(interval * RETRY_FRACTION * self._rng.uniform(0.5, 1.5))
            self._round_failed = trio.Event()
            view = self.engine.view
            if not view.contribution_fresh or view.busy:
                continue
            live = [n.key for n in self.table.invitable(time.monotonic())]
            if len(live) >= MIN_INVITABLE:
                await self.engine.start_round(live)

    # ---- why nothing happens ----

    async def _watch(self) -> None:
        """Every WATCH_S, work out why rounds cannot start (status ``waiting``); log each
        cause once when it appears (too few neighbours: once it lasted a few pings), and
        once more when it clears (see waiting.py)."""
        started = time.monotonic()
        grace_s = 2 * self.config.discovery.ping_interval_s + 1
        while True:
            now = time.monotonic()
            self.waiting = self._waiting_watch.check(self.table, self.learning.schema_hash, now)
            self._waiting_watch.log(self.waiting, self.metrics, settling=now - started < grace_s)
            await trio.sleep(WATCH_S)

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
            self._applying += 1
            self._nursery.start_soon(self._round_finished, action)
        elif isinstance(action, RoundAborted):
            self._round_over.set()
            self._round_failed.set()
            self.rounds.aborted += 1
            self.rounds.abort_reasons[action.reason] += 1
            self.metrics.rounds.labels("aborted").inc()
            self.metrics.round_aborts.labels(action.reason).inc()
            blamed = ",".join(peer_id_from_public_key(b)[-6:] for b in action.blamed)
            suspects = ",".join(peer_id_from_public_key(b)[-6:] for b in action.suspects)
            detail = f"; blamed {blamed}" if blamed else ""
            detail += f"; unexplained, suspects {suspects}" if suspects else ""
            self._log_round(action.stats, f"aborted ({action.reason}{detail})")
        elif isinstance(action, PeerSuspected):
            names = " and ".join(peer_id_from_public_key(p) for p in action.peers)
            self.metrics.suspected.labels(
                "struck" if len(action.peers) == 1 else "kept_apart"
            ).inc()
            if len(action.peers) == 1:
                log.warning(
                    "peer %s was in each of the last %d rounds that failed for reasons nobody "
                    "can prove (and nobody else was): backed off",
                    names,
                    action.failures,
                )
            else:
                log.warning(
                    "peers %s were together in each of the last %d rounds that failed for "
                    "reasons nobody can prove: this peer joins no group holding both for a while",
                    names,
                    action.failures,
                )
        elif isinstance(action, RoundCancelled):
            self._round_over.set()
            self._round_failed.set()
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

    async def _round_finished(self, result: RoundFinished) -> None:
        """A round finished: it is counted, the learning side takes it in, it is logged."""
        self.rounds.completed += 1
        try:
            extra = dict(await self.learning.round_finished(self, result))
        finally:
            self._applying -= 1
            self._round_over.set()
        stats = result.stats
        self.metrics.rounds.labels("finished").inc()
        self.metrics.round_seconds.observe(stats.seconds)
        self.metrics.round_bytes_sent.inc(stats.bytes_sent)
        outcome = extra.pop("outcome", "finished")
        self.rounds.history.append(
            {
                "group": result.group.hex(),
                "members": [peer_id_from_public_key(m) for m in result.members],
                "role": stats.role,
                "seconds": stats.seconds,
                "started_at": stats.started_ms / 1000,
                "ended_at": stats.ended_ms / 1000,
                "bytes_sent": stats.bytes_sent,
                "bytes_received": stats.bytes_received,
                "finished_at": time.time(),
                **extra,
                "clipped": stats.clipped,
            }
        )
        self._log_round(stats, outcome)

    def _log_round(self, stats: Any, outcome: str) -> None:
        members = ",".join(short_id(peer_id_from_public_key(m)) for m in stats.members) or "-"
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
        """The full status document (see status_document.py)."""
        return status_document.assemble(self)

    def remote_status_document(self, requester: bytes) -> dict[str, Any]:
        """What an admitted peer may learn by asking (see status.remote_view)."""
        return remote_view(self.status_document(), peer_id_from_public_key(requester))

    def _render_metrics(self) -> bytes:
        return status_document.render_metrics(self)
