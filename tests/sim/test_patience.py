"""When a simulation of real daemons gives up: on a stall, not on a slow machine."""

from __future__ import annotations

import logging

import pytest

from gossiplearn.sim import daemons
from gossiplearn.sim.daemons import STALL_S, Patience


def status(completed: int) -> dict:
    return {"rounds": {"completed": completed, "taking_in": 0}}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(daemons.time, "monotonic", lambda: now[0])
    return now


def test_a_slow_run_that_keeps_progressing_is_never_given_up(clock: list[float]) -> None:
    patience = Patience()
    documents: list[dict | None] = [None, None]
    # Start-up slower than the whole run's old budget (120 s + 30 s a round), each step within
    # the stall bound: one daemon answers, then the other, then rounds finish one by one.
    for step in range(12):
        clock[0] += STALL_S - 1
        if step == 0:
            documents[0] = status(0)
        elif step == 1:
            documents[1] = status(0)
        else:
            documents[step % 2] = status(documents[step % 2]["rounds"]["completed"] + 1)
        patience.note(documents)
        assert not patience.expired(), step
    assert clock[0] - 1000.0 == 12 * (STALL_S - 1)


def test_a_stall_is_given_up_and_said(clock: list[float], caplog: pytest.LogCaptureFixture) -> None:
    patience = Patience()
    documents: list[dict | None] = [status(2), status(1)]
    patience.note(documents)
    clock[0] += STALL_S - 0.5
    patience.note(documents)  # the same figures: no progress
    assert not patience.expired()
    clock[0] += 0.5
    assert patience.expired()
    with caplog.at_level(logging.WARNING, logger="gossiplearn.sim"):
        patience.gave_up(documents, 3, "OUT/peers/*/logs/peer.log")
    assert caplog.messages == [
        f"gave up on the daemons: no daemon started or finished a round for {STALL_S:g} s; "
        "2 of 2 peers are short of 3 rounds (their logs: OUT/peers/*/logs/peer.log)"
    ]


def test_a_timeout_bounds_the_whole_run(
    clock: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    patience = Patience(timeout_s=50.0)
    documents: list[dict | None] = [status(0)]
    for completed in range(1, 5):
        clock[0] += 12.5
        documents[0] = status(completed)
        patience.note(documents)
    assert patience.expired()
    with caplog.at_level(logging.WARNING, logger="gossiplearn.sim"):
        patience.gave_up(documents, 5, "OUT/peers/inproc.log")
    assert caplog.messages == [
        "gave up on the daemons: the run's 50 s are up; 1 of 1 peers are short of 5 rounds "
        "(their logs: OUT/peers/inproc.log)"
    ]


def test_a_launchers_poll_gives_up_only_on_a_stall(clock: list[float]) -> None:
    patience = Patience()
    documents: list[dict | None] = [status(1)]
    assert not patience.gives_up(documents, 3, "LOGS")  # progress: the first answer
    clock[0] += STALL_S
    assert patience.gives_up(documents, 3, "LOGS")
