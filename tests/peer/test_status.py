"""The process figures a soak test watches, and the metrics that carry them."""

from __future__ import annotations

import trio

from gossiplearn.peer.status import Metrics, process_figures, trio_task_count


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


async def test_the_status_endpoint_refuses_foreign_host_headers() -> None:
    from gossiplearn.peer.status import serve_status

    async def get(port: int, host: str | None) -> bytes:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        headers = f"Host: {host}\r\n" if host is not None else ""
        await stream.send_all(f"GET /status HTTP/1.1\r\n{headers}\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(4096):
            data += chunk
        await stream.aclose()
        return data.split(b"\r\n", 1)[0]

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_status, 0, lambda: {"ok": True}, lambda: b"")
        for host in ("127.0.0.1", f"127.0.0.1:{port}", "localhost", f"LOCALHOST:{port}", "[::1]"):
            assert await get(port, host) == b"HTTP/1.1 200 OK", host
        # DNS rebinding: a name the attacker controls, resolving to 127.0.0.1.
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", None):
            assert await get(port, host) == b"HTTP/1.1 403 Forbidden", host
        nursery.cancel_scope.cancel()


def test_the_remote_status_shows_an_insider_no_weights_neighbours_or_other_groups() -> None:
    from gossiplearn.peer.status import REMOTE_KEYS, remote_view

    def entry(group: str, members: list[str]) -> dict[str, object]:
        return {"group": group, "members": members, "seconds": 0.1}

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
                entry("g1", ["me", "asker", "other"]),
                entry("g2", ["me", "other", "third"]),
            ],
        },
        "data": {"train_samples": 340, "validation_samples": 110},
        "accuracy": 0.9,
        "blocked_peers": {"cheat": {"refused": True}},
        "model_digest": "abc",
    }
    remote = remote_view(local, "asker")
    assert tuple(remote) == REMOTE_KEYS and remote["remote"] is True
    assert remote["rounds"]["with_you"] == [entry("g1", ["me", "asker", "other"])]
    assert set(remote["rounds"]) == {"completed", "aborted", "cancelled", "in_progress", "with_you"}
    text = str(remote)
    for private in ("train_samples", "340", "third", "g2", "neighbours", "cheat", "0.9"):
        assert private not in text
