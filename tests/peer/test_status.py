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
