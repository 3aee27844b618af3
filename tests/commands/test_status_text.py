"""``gossiplearn status`` as text: the averages a peer applied or refused, the peers it blocks."""

from __future__ import annotations

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
    text = text_of({"peer_id": "me", "learning": {"acceptance": False}})
    assert any(
        line.split()
        == ["averages", "0", "applied,", "0", "refused", "(personal", "acceptance", "off)"]
        for line in text.splitlines()
    )
    assert any(line.split() == ["blocked", "-"] for line in text.splitlines())


def test_a_remote_document_shows_the_rounds_with_you_and_nothing_of_the_peers_own() -> None:
    document = {
        "schema": 1,
        "remote": True,
        "version": "9.9",
        "peer_id": "them",
        "addrs": ["/ip4/10.0.0.2/tcp/4001/p2p/them"],
        "uptime_s": 120.0,
        "rounds": {
            "with_you": [
                {
                    "group": "abcdef0123456789",
                    "members": [CHEAT, SLOW],
                    "role": "initiator",
                    "started_at": 1_700_000_000,
                    "ended_at": 1_700_000_002,
                    "outcome": "finished",
                }
            ]
        },
    }
    lines = text_of(document).splitlines()
    assert any(line.split() == ["rounds", "with", "you", "1", "finished"] for line in lines)
    row = next(line for line in lines if "abcdef01" in line)
    assert [cell.strip() for cell in row.split("│")][-3:-1] == ["initiator", "finished"]
    assert short_id(CHEAT) in row and short_id(SLOW) in row
    # None of the local document's rows, not even as a dash.
    for local_only in ("accuracy", "samples", "averages", "model digest", "blocked", "privacy"):
        assert not any(line.startswith(local_only) for line in lines), local_only
