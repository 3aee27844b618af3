"""``gossiplearn status`` as text: the averages a peer applied or refused, the peers it blocks."""

from __future__ import annotations

import time

from rich.console import Console

from gossiplearn.commands.status import render
from gossiplearn.peer.net.neighbours import short_id

CHEAT = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDXoUyTuLbDy3U"
SLOW = "12D3KooWDpJ7As7BWAwRMfu1VU2WC5jrC3rFa7UpqHKAF5HsvUss"


def text_of(document: dict[str, object]) -> str:
    console = Console(record=True, width=160)
    console.print(render(document))
    return console.export_text()


def test_averages_and_blocked_peers_are_shown() -> None:
    document = {
        "peer_id": "me",
        "learning": {"averages_applied": 3, "averages_refused": 1, "acceptance": True},
        "blocked_peers": {
            CHEAT: {"strikes": 1, "backoff_s": 0.0, "refused": True},
            SLOW: {"strikes": 2, "backoff_s": 9.5, "refused": False},
        },
    }
    lines = text_of(document).splitlines()
    assert any(
        line.split()
        == [
            "averages",
            "3",
            "applied,",
            "1",
            "refused",
            "(they",
            "would",
            "have",
            "hurt",
            "this",
            "peer's",
            "validation",
            "loss)",
        ]
        for line in lines
    )
    blocked = next(line for line in lines if line.startswith("blocked"))
    assert f"{short_id(CHEAT)} refused (equivocated)" in blocked
    assert f"{short_id(SLOW)} backed off 9.5 s" in blocked


def test_nothing_to_show_is_a_dash() -> None:
    text = text_of({"peer_id": "me", "learning": {"acceptance": False}, "blocked_peers": {}})
    assert any(
        line.split()
        == ["averages", "0", "applied,", "0", "refused", "(personal", "acceptance", "off)"]
        for line in text.splitlines()
    )
    assert any(line.split() == ["blocked", "-"] for line in text.splitlines())


def row(text: str, name: str) -> str:
    """The value shown on the row called ``name`` (whitespace collapsed)."""
    for line in text.splitlines():
        if line.startswith(name + "  "):
            return " ".join(line[len(name) :].split())
    raise AssertionError(f"no row {name!r} in:\n{text}")


def test_a_remote_peers_figures_it_does_not_share_read_not_shared() -> None:
    """What a remote peer sends (``status --addr``) lacks most keys: each such row says "not
    shared", never a figure it did not send ("privacy off", "refused 0", "last round -", an
    empty neighbours table). Whatever it sends is shown, the rounds the asker was in too."""
    remote = {
        "schema": 1,
        "remote": True,
        "peer_id": CHEAT,
        "uptime_s": 12.0,
        "rounds": {
            "with_you": [
                {"group": "ab" * 16, "members": [CHEAT, SLOW, "x"], "role": "member",
                 "seconds": 0.25, "outcome": "finished"},
            ]
        },
    }  # fmt: skip
    text = text_of(remote)
    for name in (
        "addresses", "waiting", "rounds", "in progress", "last round", "abort reasons",
        "resumed from", "samples", "model digest", "accuracy", "averages", "privacy",
        "blocked", "refused", "rejected", "neighbours",
    ):  # fmt: skip
        assert row(text, name) == "not shared", name
    assert row(text, "peer id") == CHEAT and row(text, "uptime") == "12 s"
    assert row(text, "rounds with you") == "1"
    assert "group abababab, 3 members, role member, 0.25 s, outcome finished" in text
    # The keys the reduced remote document has (a start and an end time) read as well.
    now = time.time()
    entry = {"group": "cd" * 16, "started_at": now - 12.25, "ended_at": now - 10.0}
    later = text_of({"remote": True, "rounds": {"with_you": [entry]}})
    assert "group cdcdcdcd, started 12 s ago, ended 10 s ago, 2.25 s" in later
    assert "┏" not in text  # no (empty) neighbours table
    # Figures the local endpoint sends as null still read as before: privacy off, a dash.
    local = text_of({"peer_id": "me", "privacy": None, "rounds": {"last": None}})
    assert row(local, "privacy") == "off" and row(local, "last round") == "-"


def test_a_peers_strings_are_shown_as_they_are_not_as_markup() -> None:
    text = text_of({"peer_id": "[bold]x[/bold] [/oops]", "rejected_messages": {"[/a]": 1}})
    assert row(text, "peer id") == "[bold]x[/bold] [/oops]"
    assert row(text, "rejected") == "[/a]: 1"
