"""The status endpoint: ``GET /status`` (JSON) and ``GET /metrics`` (Prometheus text) served
on 127.0.0.1 only, plus the metrics themselves.

Requests whose ``Host:`` header is not 127.0.0.1, localhost or [::1] (with any port) are
refused (403): a web page the operator visits could otherwise point a name it controls at
127.0.0.1 (DNS rebinding) and read the status from the browser.

Any local user can connect, so the server bounds what connections cost: at most
MAX_CONNECTIONS are served at once (one more is closed as soon as it is accepted, without a
task), and each must deliver its request head within HEAD_TIMEOUT_S and be answered within
REQUEST_TIMEOUT_S. 2,000 slow connections (slowloris) used to hold 1,231 file descriptors;
now they hold at most MAX_CONNECTIONS = 16 (refusals counted in
gossiplearn_status_refused_total{reason}).

The JSON document's schema is stable and documented in docs/operating.md ("The status document"); new keys
may be added, existing ones keep their meaning. ``STATUS_SCHEMA_VERSION`` changes only if a key
changes meaning.
"""

from __future__ import annotations

import errno
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
#: From accepting a connection to its whole request head read. The clients are local
#: (``gossiplearn status``, curl, a Prometheus scraper on this machine) and write their head,
#: a few hundred bytes, in one go right after connecting: 2 s is ~1,000x what that takes.
HEAD_TIMEOUT_S = 2.0
#: From accepting a connection to the end of its answer (a /status document of a few
#: hundred KiB at most, into a local socket).
REQUEST_TIMEOUT_S = 5.0
#: Connections served at once. A scraper and an operator's `status --watch` are a handful; 16
#: is plenty, and bounds a local user's slow connections to 16 file descriptors and tasks
#: (each held at most HEAD_TIMEOUT_S unless it sends a request at once).
MAX_CONNECTIONS = 16
#: Why connections were closed unanswered (gossiplearn_status_refused_total{reason}).
STATUS_REFUSAL_REASONS = ("busy", "head_timeout")
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
        self.status_refused = Counter(
            "gossiplearn_status_refused",
            "Connections to the local status endpoint closed unanswered: over its connection "
            "cap (busy), or no request head in time (head_timeout).",
            ["reason"],
            registry=r,
        )
        self.inbound_refused = Gauge(
            "gossiplearn_inbound_refused",
            "Inbound connections closed before admission, by reason (no_ip, rate_limited, "
            "evicted, handshake_timeout).",
            ["reason"],
            registry=r,
        )
        self.bulk_refused = Gauge(
            "gossiplearn_bulk_refused",
            "Bulk channel connections closed without (all) their frames, by reason (busy, "
            "timeout, header, no_round, auth, replayed, sender_cap, record, no_frame).",
            ["reason"],
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
REMOTE_KEYS = ("schema", "remote", "version", "peer_id", "addrs", "uptime_s", "rounds")
#: The keys of each round in the remote document's ``rounds.with_you``.
REMOTE_ROUND_KEYS = ("group", "members", "role", "started_at", "ended_at", "outcome")


def remote_view(document: dict[str, Any], requester: str) -> dict[str, Any]:
    """The status document an admitted peer ``requester`` (a peer id) gets by asking: who
    this peer is, and of its rounds only what the requester saw itself as a member of each:
    the group id, its members, this peer's role (the initiator is named in the INVITE every
    member got), when the round started and ended, to the second, and its outcome (every
    member confirmed it). Nothing this peer measured or decided on its own: no model or
    backbone digest (after a refused average that is the hash of this peer's exact
    contribution: a guess checker for it), no accuracy or validation loss, no acceptance or
    refusal of the average (a poisoner's feedback), no sample counts (a member's weight when
    weighting is on), no neighbours, backoff or clock figures, no counts of rounds with
    others."""
    with_you = []
    for entry in document["rounds"]["history"]:
        if requester not in entry.get("members", ()):
            continue
        ended = entry.get("ended_at")
        started = entry.get("started_at")
        with_you.append(
            {
                "group": entry["group"],
                "members": list(entry["members"]),
                "role": entry.get("role"),
                "started_at": None if started is None else int(started),
                "ended_at": None if ended is None else int(ended),
                "outcome": "finished",  # only finished rounds are kept in the history
            }
        )
    return {
        "schema": document["schema"],
        "remote": True,
        "version": document["version"],
        "peer_id": document["peer_id"],
        "addrs": document["addrs"],
        "uptime_s": document["uptime_s"],
        "rounds": {"with_you": with_you},
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
    refused: Any = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,  # type: ignore[name-defined]
) -> None:
    """Serve the endpoint on 127.0.0.1:``port`` (or on ``listeners`` already opened) until
    cancelled; reports the bound port. ``refused``: a labelled prometheus Counter of the
    connections closed unanswered (Metrics.status_refused), or None."""
    if listeners is None:
        listeners = await open_status_listeners(port)
    task_status.started(listeners[0].socket.getsockname()[1])
    serving = 0

    def count(reason: str) -> None:
        if refused is not None:
            refused.labels(reason).inc()

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal serving
        try:
            with trio.move_on_after(REQUEST_TIMEOUT_S):
                with trio.move_on_after(HEAD_TIMEOUT_S) as head:
                    request = await _read_request(stream)
                if head.cancelled_caught:
                    count("head_timeout")
                    return
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
            serving -= 1
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def accept(listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        nonlocal serving
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                # Out of file descriptors (as trio.serve_listeners does): wait, do not spin.
                log.warning("status endpoint: cannot accept (%s); retrying", exc.strerror or exc)
                await trio.sleep(0.1)
                continue
            if serving >= MAX_CONNECTIONS:
                # Closed here, before any task or read: its descriptor lives microseconds.
                count("busy")
                stream.socket.close()
                continue
            serving += 1
            nursery.start_soon(handle, stream)

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(accept, listener, nursery)


_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


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
