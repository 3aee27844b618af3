"""The process figures a soak test watches, and the metrics that carry them; the local
status endpoint's limits (Host header, connection cap, request head deadline); what the
remote status shows an admitted peer."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections import Counter

import pytest
import trio

from gossiplearn.peer import status as status_module
from gossiplearn.peer.status import (
    MAX_CONNECTIONS,
    Metrics,
    open_fd_count,
    process_figures,
    serve_status,
    trio_task_count,
)


def test_trio_task_count_is_none_outside_trio() -> None:
    assert trio_task_count() is None
    assert process_figures()["trio_tasks"] is None


async def test_trio_task_count_follows_tasks_started_and_ended() -> None:
    before = trio_task_count()
    assert before is not None and before >= 1
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(release.wait)
        await trio.testing.wait_all_tasks_blocked()
        assert trio_task_count() == before + 5
        release.set()
    assert trio_task_count() == before


def test_process_figures_are_plausible() -> None:
    figures = process_figures()
    assert figures["rss_bytes"] is not None and figures["rss_bytes"] > 10 * 2**20
    assert figures["open_fds"] is not None and figures["open_fds"] >= 3


def test_metrics_carry_process_figures_and_trio_tasks() -> None:
    metrics = Metrics()
    metrics.trio_tasks.set(7)
    text = metrics.render().decode()
    assert "gossiplearn_trio_tasks 7.0" in text
    assert "process_resident_memory_bytes" in text and "process_open_fds" in text


async def get(port: int, host: str | None = "127.0.0.1") -> bytes:
    """The status line of ``GET /status`` with that Host header."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    headers = f"Host: {host}\r\n" if host is not None else ""
    await stream.send_all(f"GET /status HTTP/1.1\r\n{headers}\r\n".encode())
    data = b""
    while chunk := await stream.receive_some(4096):
        data += chunk
    await stream.aclose()
    return data.split(b"\r\n", 1)[0]


async def test_the_status_endpoint_refuses_foreign_host_headers() -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_status, 0, lambda: {"ok": True}, lambda: b"")
        for host in ("127.0.0.1", f"127.0.0.1:{port}", "localhost", f"LOCALHOST:{port}", "[::1]"):
            assert await get(port, host) == b"HTTP/1.1 200 OK", host
        # DNS rebinding: a name the attacker controls, resolving to 127.0.0.1.
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", None):
            assert await get(port, host) == b"HTTP/1.1 403 Forbidden", host
        nursery.cancel_scope.cancel()


class Refusals:
    """Stands in for the labelled prometheus Counter serve_status counts refusals in."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def labels(self, reason: str) -> Refusals:
        self._reason = reason
        return self

    def inc(self) -> None:
        self.counts[self._reason] += 1


#: Opens N connections to the port, each sending a request head that never ends, then holds
#: them until its stdin closes (a slowloris in its own process, so that this process's file
#: descriptors are the server's alone).
SLOW_CLIENTS = """
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
port, count = int(sys.argv[1]), int(sys.argv[2])
held = []
for _ in range(count):
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        sock.sendall(b"GET /status HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nX-Slow: ")
    except OSError:
        pass  # closed by the server already
    held.append(sock)
print("ready", flush=True)
sys.stdin.read()
"""


async def slow_clients_peak_fds(connections: int, refusals: Refusals, enough: int) -> int:
    """The most file descriptors this process (serving the status) held over its baseline
    while ``connections`` slow clients connected; stops early once over ``enough``."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_status(
                0, lambda: {"ok": True}, lambda: b"", refused=refusals, task_status=task_status
            )
        )
        peak = 0
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", SLOW_CLIENTS, str(port), str(connections)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        baseline = open_fd_count()  # the clients' pipes included
        assert baseline is not None
        try:
            with trio.fail_after(60):
                ready = False
                # Until every client is connected and the server has let go of each (refused
                # at once, or at its head deadline), or it holds ``enough`` of them.
                while not (ready and sum(refusals.counts.values()) >= connections):
                    peak = max(peak, (open_fd_count() or 0) - baseline)
                    if peak >= enough:
                        break
                    assert process.stdout is not None
                    with trio.move_on_after(0.01):
                        if not ready:
                            ready = b"ready" in await process.stdout.receive_some()
                        else:
                            await trio.sleep_forever()  # sample again in 10 ms
        finally:
            process.kill()
            await process.wait()
        # Reachable again once the flood is gone.
        with trio.fail_after(10):
            assert await get(port) == b"HTTP/1.1 200 OK"
        nursery.cancel_scope.cancel()
    return peak


@pytest.mark.timeout(120)
async def test_two_thousand_slow_connections_hold_at_most_the_connection_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The red team held 1,231 file descriptors of a daemon with 2,000 slow connections to its
    # status endpoint. Now it serves MAX_CONNECTIONS at once and closes the rest as soon as
    # it accepts them; each must send its request head within HEAD_TIMEOUT_S.
    refusals = Refusals()
    peak = await slow_clients_peak_fds(2_000, refusals, enough=1_000)
    assert peak <= MAX_CONNECTIONS + 2, peak  # + a connection accepted, not closed yet
    assert refusals.counts["busy"] >= 2_000 - 2 * MAX_CONNECTIONS
    assert refusals.counts["head_timeout"] >= MAX_CONNECTIONS
    assert sum(refusals.counts.values()) == 2_000
    # Without the cap and the head deadline, the same clients hold 1,000+ descriptors.
    monkeypatch.setattr(status_module, "MAX_CONNECTIONS", 10**6)
    monkeypatch.setattr(status_module, "HEAD_TIMEOUT_S", 60.0)
    monkeypatch.setattr(status_module, "REQUEST_TIMEOUT_S", 60.0)
    assert await slow_clients_peak_fds(2_000, Refusals(), enough=1_000) >= 1_000


async def test_a_request_head_must_arrive_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_module, "HEAD_TIMEOUT_S", 0.5)
    refusals = Refusals()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_status(
                0, lambda: {"ok": True}, lambda: b"", refused=refusals, task_status=task_status
            )
        )
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        began = trio.current_time()
        with trio.fail_after(10):
            # A byte every 0.1 s: a head that never ends (a slowloris).
            with contextlib.suppress(trio.BrokenResourceError):
                while True:
                    await stream.send_all(b"X")
                    with trio.move_on_after(0.1):
                        if not await stream.receive_some(10):
                            break
        assert 0.5 <= trio.current_time() - began < 10
        assert refusals.counts == {"head_timeout": 1}
        await stream.aclose()
        nursery.cancel_scope.cancel()


def test_the_remote_status_shows_an_insider_only_what_it_saw_as_a_member() -> None:
    from gossiplearn.peer.status import REMOTE_KEYS, REMOTE_ROUND_KEYS, remote_view

    def entry(group: str, members: list[str], refused: bool = False) -> dict[str, object]:
        # A history entry as the runtime and the built-in learning side write it.
        return {
            "group": group,
            "members": members,
            "role": "member",
            "seconds": 0.9,
            "started_at": 1_700_000_000.25,
            "ended_at": 1_700_000_001.15,
            "finished_at": 1_700_000_003.71,  # after this peer took the average in
            "bytes_sent": 1234,
            "bytes_received": 4321,
            "accepted": not refused,
            "refusal": "worse" if refused else None,
            "validation_loss": {"own": 0.31, "average": 0.45},
            "backbone_digest": "d1g35t0fmyc0ntr1but10n",
            "accuracy": 0.875,
            "clipped": 0,
        }

    local = {
        "schema": 1,
        "version": "x",
        "peer_id": "me",
        "addrs": ["/ip4/127.0.0.1/tcp/1/p2p/me"],
        "uptime_s": 5.0,
        "neighbours": [{"peer_id": "asker"}, {"peer_id": "other"}],
        "rounds": {
            "completed": 2,
            "aborted": 1,
            "cancelled": 0,
            "abort_reasons": {"equivocation": 1},
            "in_progress": False,
            "current": None,
            "last": entry("g2", ["me", "other", "third"]),
            "history": [
                entry("g1", ["me", "asker", "other"], refused=True),
                entry("g2", ["me", "other", "third"]),
            ],
        },
        "data": {"train_samples": 340, "validation_samples": 110},
        "accuracy": 0.9,
        "blocked_peers": {"cheat": {"refused": True}},
        "model_digest": "abc",
        "backbone_digest": "d1g35t0fmyc0ntr1but10n",
    }
    remote = remote_view(local, "asker")
    assert tuple(remote) == REMOTE_KEYS and remote["remote"] is True
    # Of the rounds, only the one the asker was in, and only what it saw there itself.
    assert remote["rounds"] == {
        "with_you": [
            {
                "group": "g1",
                "members": ["me", "asker", "other"],
                "role": "member",
                "started_at": 1_700_000_000,
                "ended_at": 1_700_000_001,
                "outcome": "finished",
            }
        ]
    }
    assert tuple(remote["rounds"]["with_you"][0]) == REMOTE_ROUND_KEYS
    text = str(remote)
    for private in (
        "train_samples",
        "340",
        "third",
        "g2",
        "neighbours",
        "cheat",
        "0.9",
        "0.875",
        "0.31",
        "0.45",
        "d1g35t0",  # after a refused average: the hash of this peer's exact contribution
        "abc",
        "worse",
        "accepted",
        "refusal",
        "validation_loss",
        "digest",
        "1234",
        ".71",  # finished_at: when this peer was done taking the average in (its decision)
        "completed",
        "aborted",
    ):
        assert private not in text, private
