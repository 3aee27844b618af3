"""The status document and the /metrics figures of a running peer, read off its runtime: the
host's counters, the neighbour table, the round engine's view, the round log, the waiting
causes, and the keys its learning side adds.

The document's schema is stable and documented in docs/operating.md ("The status document"); serving it
(local HTTP, and the smaller view admitted peers get) is peer/status.py's.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gossiplearn.crypto.identity import peer_id_from_public_key
from gossiplearn.peer.net.neighbours import Neighbour, short_id
from gossiplearn.peer.net.waiting import CLOCK_TOLERANCE_MS
from gossiplearn.peer.status import STATUS_SCHEMA_VERSION, process_figures, trio_task_count
from gossiplearn.version import __version__

if TYPE_CHECKING:
    from gossiplearn.peer.net.runtime import PeerRuntime


def assemble(runtime: PeerRuntime) -> dict[str, Any]:
    """The full document of ``GET /status`` (docs/operating.md, "The status document")."""
    now = time.monotonic()
    counters = runtime.host.counters
    neighbours = [_neighbour_status(runtime, n, now) for n in runtime.table.all()]
    bulk = runtime.engine.bulk
    return {
        "schema": STATUS_SCHEMA_VERSION,
        "version": __version__,
        "peer_id": runtime.peer_id,
        "addrs": runtime.host.addrs(),
        "uptime_s": round(time.time() - runtime.started, 3),
        "neighbours": neighbours,
        "rounds": {
            "completed": runtime.rounds.completed,
            # Completed rounds whose result the learning side is still taking in: their
            # history entries come when it is done.
            "taking_in": runtime.averages_pending,
            "aborted": runtime.rounds.aborted,
            "cancelled": runtime.rounds.cancelled,
            "abort_reasons": dict(runtime.rounds.abort_reasons),
            "in_progress": runtime.engine.view.busy,
            "current": _current_round(runtime),
            "last": runtime.rounds.last,
            "history": list(runtime.rounds.history),
        },
        "waiting": [
            {"cause": w.cause, "message": w.message, "peer": w.peer} for w in runtime.waiting
        ],
        "clock_tolerance_ms": CLOCK_TOLERANCE_MS,
        "refused_connections": counters.refused_connections + counters.refused_streams,
        "rate_limited_connections": counters.rate_limited_connections,
        "inbound_refused": dict(counters.inbound_refused),
        "bulk_refused": {} if bulk is None else dict(bulk.refusals),
        "bulk": {
            "frames_sent": runtime.engine.bulk_frames_sent,
            "fallbacks": runtime.engine.bulk_fallbacks,
            "relayed": runtime.engine.bulk_relayed,
        },
        "relay": None if runtime.host.relaying is None else runtime.host.relaying.status(),
        "rejected_messages": dict(runtime.rejected),
        **runtime.learning.status(),
        "process": process_figures(),
        "contribution_fresh": runtime.engine.view.contribution_fresh,
        "blocked_peers": {
            peer_id_from_public_key(peer): state
            for peer, state in runtime.engine.view.blocked.items()
        },
    }


def _neighbour_status(runtime: PeerRuntime, n: Neighbour, now: float) -> dict[str, Any]:
    counters = runtime.host.counters
    table = runtime.table
    offset = n.clock_offset_ms
    live = table.is_live(n, now)
    return {
        "peer_id": n.peer_id,
        "addrs": n.addrs,
        "live": live,
        "invitable": live and not table.clock_skewed(n) and not table.schema_differs(n),
        "rtt_ms": None if n.rtt_ms is None else round(n.rtt_ms, 3),
        "last_seen_s": None if n.last_seen is None else round(now - n.last_seen, 3),
        "source": n.source,
        "failures": n.failures,
        "clock_offset_ms": None if offset is None else round(offset, 1),
        "clock_ok": None if offset is None else not table.clock_skewed(n),
        "same_model": None
        if n.schema_hash is None or runtime.learning.schema_hash is None
        else n.schema_hash == runtime.learning.schema_hash,
        "bytes_in": counters.bytes_in.get(n.key, 0),
        "bytes_out": counters.bytes_out.get(n.key, 0),
        "reached": runtime.host.reached(n.key),
    }


def _current_round(runtime: PeerRuntime) -> dict[str, Any] | None:
    current = runtime.engine.view.current_round
    if current is None:
        return None
    group, started_ms, deadline_ms = current
    now_ms = time.time() * 1000
    return {
        "group": group.hex(),
        "age_s": round((now_ms - started_ms) / 1000, 3),
        "deadline_in_s": round((deadline_ms - now_ms) / 1000, 3),
    }


def render_metrics(runtime: PeerRuntime) -> bytes:
    """``GET /metrics``: the gauges read from the runtime now, then every metric rendered."""
    counters = runtime.host.counters
    runtime.metrics.refused_connections.set(counters.refused_connections + counters.refused_streams)
    now = time.monotonic()
    runtime.metrics.neighbours_live.set(len(runtime.table.live(now)))
    runtime.metrics.rate_limited_connections.set(counters.rate_limited_connections)
    for reason, count in counters.inbound_refused.items():
        runtime.metrics.inbound_refused.labels(reason).set(count)
    if runtime.engine.bulk is not None:
        for reason, count in runtime.engine.bulk.refusals.items():
            runtime.metrics.bulk_refused.labels(reason).set(count)
    skewed = 0
    runtime.metrics.neighbour_clock_offset.clear()
    for n in runtime.table.all():
        if n.clock_offset_ms is not None:
            runtime.metrics.neighbour_clock_offset.labels(short_id(n.peer_id)).set(
                n.clock_offset_ms / 1000
            )
        skewed += runtime.table.is_live(n, now) and runtime.table.clock_skewed(n)
    runtime.metrics.neighbours_clock_skewed.set(skewed)
    runtime.metrics.uptime.set(time.time() - runtime.started)
    runtime.metrics.trio_tasks.set(trio_task_count() or 0)
    blocked = runtime.engine.view.blocked.values()
    refused = sum(1 for state in blocked if state["refused"])
    runtime.metrics.blocked_peers.labels("refused").set(refused)
    runtime.metrics.blocked_peers.labels("backoff").set(len(blocked) - refused)
    return runtime.metrics.render()
