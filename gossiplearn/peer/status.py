"""The status endpoint: ``GET /status`` (JSON) and ``GET /metrics`` (Prometheus text) served
on 127.0.0.1 only, plus the metrics themselves.

Requests whose ``Host:`` header is not 127.0.0.1, localhost or [::1] (with any port) are
refused (403): a web page the operator visits could otherwise point a name it controls at
127.0.0.1 (DNS rebinding) and read the status from the browser.

The JSON document's schema is stable and documented in docs/operating.md ("The status document"); new keys
may be added, existing ones keep their meaning. ``STATUS_SCHEMA_VERSION`` changes only if a key
changes meaning.
"""

from __future__ import annotations

import json
import logging
import os
import resource
from collections.abc import Callable
from typing import Any

import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

log = logging.getLogger("gossiplearn.status")

STATUS_SCHEMA_VERSION = 1
MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT_S = 5.0
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")


class Metrics:
    """Prometheus metrics of one peer, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rounds = Counter("gossiplearn_rounds", "Rounds by outcome.", ["outcome"], registry=r)
        self.round_aborts = Counter(
            "gossiplearn_round_aborts", "Aborted rounds by reason.", ["reason"], registry=r
        )
        self.rejected_messages = Counter(
            "gossiplearn_rejected_messages",
            "Messages refused, by reason (decode, signature, replay, ...).",
            ["reason"],
            registry=r,
        )
        self.round_seconds = Histogram(
            "gossiplearn_round_seconds",
            "Duration of completed rounds.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.round_bytes_sent = Counter(
            "gossiplearn_round_bytes_sent", "Frame bytes sent in rounds.", registry=r
        )
        self.refused_connections = Gauge(
            "gossiplearn_refused_connections",
            "Connections and streams refused by admission since start.",
            registry=r,
        )
        self.neighbours_live = Gauge(
            "gossiplearn_neighbours_live", "Neighbours that answered recently.", registry=r
        )
        self.accuracy = Gauge(
            "gossiplearn_validation_accuracy", "Accuracy on local held-out data.", registry=r
        )
        self.uptime = Gauge("gossiplearn_uptime_seconds", "Seconds since start.", registry=r)
        self.privacy_epsilon_spent = Gauge(
            "gossiplearn_privacy_epsilon_spent",
            "Differential privacy: epsilon spent on this peer's training records ([privacy]).",
            registry=r,
        )
        self.privacy_epsilon_remaining = Gauge(
            "gossiplearn_privacy_epsilon_remaining",
            "Differential privacy: privacy.epsilon minus the epsilon spent.",
            registry=r,
        )
        self.privacy_exhausted = Gauge(
            "gossiplearn_privacy_budget_exhausted",
            "1: the privacy budget cannot pay for another round; the peer stopped training.",
            registry=r,
        )
        self.averages = Counter(
            "gossiplearn_averages",
            "Finished rounds' averages by this peer's decision: accepted, or refused because "
            "they would hurt its own validation loss.",
            ["decision"],
            registry=r,
        )
        self.equivocations = Counter(
            "gossiplearn_equivocations",
            "Peers caught signing two conflicting messages (each proof kept in evidence/).",
            registry=r,
        )
        self.suspected = Counter(
            "gossiplearn_suspected",
            "Group testing over rounds that failed for reasons nobody can prove: a peer struck "
            "(in every such failure), or a pair kept apart (always there together).",
            ["action"],
            registry=r,
        )
        self.blocked_peers = Gauge(
            "gossiplearn_blocked_peers",
            "Peers neither invited nor answered now: backed off, or refused (equivocated).",
            ["state"],
            registry=r,
        )
        self.rate_limited_connections = Gauge(
            "gossiplearn_rate_limited_connections",
            "Inbound connections closed before the handshake: their IP used up its failed "
            "admissions.",
            registry=r,
        )
        self.neighbours_clock_skewed = Gauge(
            "gossiplearn_neighbours_clock_skewed",
            "Neighbours whose clock is off ours by more than the tolerance (not invited).",
            registry=r,
        )
        self.neighbour_clock_offset = Gauge(
            "gossiplearn_neighbour_clock_offset_seconds",
            "Estimated clock offset of each neighbour (its clock minus ours).",
            ["peer"],
            registry=r,
        )
        self.waiting = Gauge(
            "gossiplearn_waiting",
            "1 for each cause that keeps this peer from starting rounds now.",
            ["cause"],
            registry=r,
        )
        self.checkpoint_failures = Counter(
            "gossiplearn_checkpoint_failures",
            "Checkpoints that could not be written (the last good one stays on disk).",
            registry=r,
        )
        # process_resident_memory_bytes, process_open_fds, ... (Linux /proc), for soak tests
        ProcessCollector(registry=r)
        self.trio_tasks = Gauge(
            "gossiplearn_trio_tasks", "Live trio tasks in the daemon's run.", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


#: The keys of the status document an admitted peer gets over libp2p (see remote_view).
REMOTE_KEYS = (
    "schema",
    "remote",
    "version",
    "peer_id",
    "addrs",
    "uptime_s",
    "rounds",
    "model_digest",
)


def remote_view(document: dict[str, Any], requester: str) -> dict[str, Any]:
    """The status document an admitted peer ``requester`` (a peer id) gets by asking: less
    than the local one, so an insider learns little it could use. No sample counts (a
    member's weight is its sample count when weighting is on), no neighbours or their
    addresses, no backoff or clock figures, no accuracy; of the round history only the rounds
    the requester was itself a member of (it knows those members anyway)."""
    rounds = document["rounds"]
    return {
        "schema": document["schema"],
        "remote": True,
        "version": document["version"],
        "peer_id": document["peer_id"],
        "addrs": document["addrs"],
        "uptime_s": document["uptime_s"],
        "rounds": {
            "completed": rounds["completed"],
            "aborted": rounds["aborted"],
            "cancelled": rounds["cancelled"],
            "in_progress": rounds["in_progress"],
            "with_you": [e for e in rounds["history"] if requester in e.get("members", ())],
        },
        "model_digest": document.get("model_digest"),
    }


def trio_task_count() -> int | None:
    """Live tasks under trio's root task (call from the trio thread); None outside trio."""
    try:
        stack = [trio.lowlevel.current_root_task()]
    except RuntimeError:
        return None
    count = 0
    while stack:
        task = stack.pop()
        if task is None:
            continue
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


def open_fd_count() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux
        return None


def resident_bytes() -> int | None:
    """Current resident set size (Linux /proc), else the peak from getrusage."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def process_figures() -> dict[str, int | None]:
    """What a soak test watches: memory, file descriptors and trio tasks."""
    return {
        "rss_bytes": resident_bytes(),
        "open_fds": open_fd_count(),
        "trio_tasks": trio_task_count(),
    }


async def open_status_listeners(port: int) -> list[trio.SocketListener]:
    """The endpoint's listening sockets on 127.0.0.1:``port`` (OSError if it is taken)."""
    return list(await trio.open_tcp_listeners(port, host="127.0.0.1"))


async def serve_status(
    port: int,
    status: Callable[[], dict[str, Any]],
    metrics: Callable[[], bytes],
    *,
    listeners: list[trio.SocketListener] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,  # type: ignore[name-defined]
) -> None:
    """Serve the endpoint on 127.0.0.1:``port`` (or on ``listeners`` already opened) until
    cancelled; reports the bound port."""
    if listeners is None:
        listeners = await open_status_listeners(port)
    task_status.started(listeners[0].socket.getsockname()[1])

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(REQUEST_TIMEOUT_S):
                request = await _read_request(stream)
                path = None if request is None else request[0]
                if request is None:
                    await _respond(stream, 400, "text/plain", b"bad request\n")
                elif not _local_host(request[1]):
                    await _respond(stream, 403, "text/plain", b"Host must be 127.0.0.1\n")
                elif path in ("/status", "/status/"):
                    body = json.dumps(status(), indent=2, sort_keys=True).encode() + b"\n"
                    await _respond(stream, 200, "application/json", body)
                elif path == "/metrics":
                    await _respond(stream, 200, "text/plain; version=0.0.4", metrics())
                else:
                    await _respond(stream, 404, "text/plain", b"try /status or /metrics\n")
        except Exception as exc:  # a broken client must never take the endpoint down
            log.debug("status request failed: %r", exc)
        finally:
            await stream.aclose()

    await trio.serve_listeners(handle, listeners)


async def _read_request(stream: trio.SocketStream) -> tuple[str, str | None] | None:
    """(path, Host header or None) of a GET request, or None if it is not one."""
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        chunk = await stream.receive_some(1024)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST_BYTES:
            return None
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    parts = lines[0].split()
    if len(parts) < 2 or parts[0] != b"GET":
        return None
    host = None
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"host":
            host = value.strip().decode("ascii", "replace")
            break
    return parts[1].split(b"?", 1)[0].decode("ascii", "replace"), host


def _local_host(host: str | None) -> bool:
    """A Host header naming this machine's loopback (any port), not a name that resolves
    to it (DNS rebinding)."""
    if host is None:
        return False
    name = host.lower()
    if name.startswith("["):
        name = name[: name.find("]") + 1]
    else:
        name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
    return name in LOCAL_HOSTS


async def _respond(stream: trio.SocketStream, code: int, kind: str, body: bytes) -> None:
    reason = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found"}[code]
    head = (
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    await stream.send_all(head.encode() + body)
