"""``gossiplearn status DIR``: what a peer is doing, from its local endpoint or, with ``--addr``,
over libp2p from a remote peer that admits us."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import typer

from gossiplearn.commands.common import fail
from gossiplearn.peer.config import ConfigError, load_config

WATCH_INTERVAL_S = 2.0


class NotRunning(Exception):
    pass


def fetch_local(directory: Path) -> dict[str, Any]:
    try:
        config = load_config(directory)
    except ConfigError as exc:
        fail(str(exc), 2)
    url = f"http://127.0.0.1:{config.status.port}/status"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            document: dict[str, Any] = json.load(response)
    except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError) as exc:
        raise NotRunning(
            f"the daemon for {directory} is not running (nothing answers on 127.0.0.1:"
            f"{config.status.port}); start it with `gossiplearn run {directory}`"
        ) from exc
    return document


def fetch_remote(address: str, identity_dir: Path) -> dict[str, Any]:
    import trio

    from gossiplearn.crypto.identity import IdentityError, load_key_file
    from gossiplearn.peer.config import IDENTITY_FILE, dial_address_problem
    from gossiplearn.peer.net.framing import read_frame, write_frame
    from gossiplearn.peer.net.host import STATUS_PROTOCOL, Admission, Host
    from gossiplearn.protocol import (
        ReplayGuard,
        Status,
        decode_envelope,
        encode_envelope,
        sequence_start,
    )

    problem = dial_address_problem(address)
    if problem:
        fail(f"--addr: {problem}", 2)
    try:
        identity = load_key_file(identity_dir / IDENTITY_FILE)
    except IdentityError as exc:
        fail(f"--identity: {exc}")

    async def ask() -> dict[str, Any]:
        from gossiplearn.crypto.identity import public_key_from_peer_id
        from gossiplearn.peer.net.host import split_p2p_multiaddr

        target = public_key_from_peer_id(split_p2p_multiaddr(address)[1])
        host = Host(identity, ["/ip4/127.0.0.1/tcp/0"], Admission([target]))
        async with host.run():
            await host.connect(address)
            with trio.fail_after(10):
                stream = await host.open_stream(target, STATUS_PROTOCOL)
                now = int(time.time() * 1000)
                request = encode_envelope(
                    identity,
                    identity.public_key,
                    target,
                    Status(""),
                    seq=sequence_start(now),
                    ts=now,
                )
                await write_frame(stream, request)  # type: ignore[arg-type]
                reply = await read_frame(stream, 1 << 20)  # type: ignore[arg-type]
        if reply is None:
            raise NotRunning(f"{address} closed the stream: does it admit {identity.peer_id}?")
        envelope = decode_envelope(
            reply,
            recipient=identity.public_key,
            now_ms=int(time.time() * 1000),
            replay=ReplayGuard(),
            expected_sender=target,
        )
        assert isinstance(envelope.body, Status)
        return dict(json.loads(envelope.body.json))

    try:
        return trio.run(ask)
    except NotRunning:
        raise
    except Exception as exc:
        raise NotRunning(f"no status from {address}: {exc!r}") from exc


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _last_round(last: dict[str, Any] | None) -> str:
    if not last:
        return "-"
    text = f"{last.get('seconds', 0):.2f} s, group {str(last.get('group', ''))[:8]}"
    if "members" in last:
        text += f", {len(last['members'])} members"
    if last.get("finished_at"):
        text = f"{_age(time.time() - float(last['finished_at']))}, " + text
    return text


def _current_round(current: dict[str, Any] | None) -> str:
    if not current:
        return "-"
    return (
        f"group {str(current.get('group', ''))[:8]}, running {current.get('age_s', 0):.1f} s, "
        f"deadline in {current.get('deadline_in_s', 0):.1f} s"
    )


def _resumed(resumed: dict[str, Any] | None, present: bool) -> str:
    if not present:
        return "-"
    if resumed is None:
        return "a fresh model (no checkpoint)"
    saved = resumed.get("saved_at")
    when = f", saved {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(saved))}" if saved else ""
    return (
        f"the checkpoint of round {resumed.get('rounds_completed', '?')} "
        f"(model {str(resumed.get('model_digest') or '')[:16]}{when})"
    )


def _samples(data: dict[str, Any] | None) -> str:
    if not data:
        return "-"
    return (
        f"{data.get('train_samples', '?')} training, "
        f"{data.get('validation_samples', '?')} validation (held out)"
    )


def _averages(learning: dict[str, Any] | None) -> str:
    if not learning:
        return "-"
    applied, refused = learning.get("averages_applied", 0), learning.get("averages_refused", 0)
    text = f"{applied} applied, {refused} refused"
    if learning.get("acceptance") is False:
        text += " (personal acceptance off)"
    elif refused:
        text += " (they would have hurt this peer's validation loss)"
    return text


def _privacy(privacy: dict[str, Any] | None) -> str:
    if not privacy:
        return "off"
    text = (
        f"epsilon {privacy.get('epsilon_spent', 0):.3f} spent of {privacy.get('epsilon', 0):g}, "
        f"{privacy.get('epsilon_remaining', 0):.3f} left (delta {privacy.get('delta', 0):g})"
    )
    if privacy.get("exhausted"):
        text += "; budget spent: no longer trains or contributes"
    return text


def _blocked(blocked: dict[str, dict[str, Any]] | None) -> str:
    if not blocked:
        return "-"
    from gossiplearn.peer.net.neighbours import short_id

    return ", ".join(
        f"{short_id(peer)} "
        + (
            "refused (equivocated)"
            if state.get("refused")
            else f"backed off {state.get('backoff_s')} s"
        )
        for peer, state in blocked.items()
    )


#: Rounds of a remote document's ``with_you`` shown (the newest).
REMOTE_ROUNDS_SHOWN = 10


def render_remote(document: dict[str, Any]) -> Any:
    """A remote peer's document (``--addr``): who it is, and the rounds we were in with it,
    as we saw them (it tells nothing it measured or decided itself)."""
    from rich.console import Group
    from rich.table import Table

    from gossiplearn.peer.net.neighbours import short_id

    with_you = (document.get("rounds") or {}).get("with_you") or []
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    for name, value in (
        ("peer id", document.get("peer_id", "?")),
        ("version", document.get("version", "?")),
        ("addresses", "\n".join(document.get("addrs", [])) or "-"),
        ("uptime", f"{document.get('uptime_s', 0):.0f} s"),
        ("rounds with you", f"{len(with_you)} finished"),
    ):
        summary.add_row(name, str(value))
    rounds = Table(title=f"rounds with you (newest {REMOTE_ROUNDS_SHOWN})", expand=False)
    for column in ("group", "ended", "seconds", "members", "its role", "outcome"):
        rounds.add_column(column)
    for entry in list(reversed(with_you))[:REMOTE_ROUNDS_SHOWN]:
        started, ended = entry.get("started_at"), entry.get("ended_at")
        rounds.add_row(
            str(entry.get("group", ""))[:8],
            "-" if ended is None else _age(max(0.0, time.time() - float(ended))),
            "-" if started is None or ended is None else f"{float(ended) - float(started):.0f}",
            ", ".join(short_id(m) for m in entry.get("members", [])),
            str(entry.get("role", "-")),
            str(entry.get("outcome", "-")),
        )
    return Group(summary, rounds)


def render(document: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.table import Table

    from gossiplearn.peer.net.neighbours import short_id
    from gossiplearn.sim.report import human_bytes

    if document.get("remote"):
        return render_remote(document)
    rounds = document.get("rounds", {})
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    accuracy = document.get("accuracy")
    rows: list[tuple[str, object]] = [
        ("peer id", document.get("peer_id", "?")),
        ("addresses", "\n".join(document.get("addrs", [])) or "-"),
        ("uptime", f"{document.get('uptime_s', 0):.0f} s"),
    ]
    rows += [("waiting", w.get("message", "?")) for w in document.get("waiting") or []]
    rows += [
        (
            "rounds",
            f"{rounds.get('completed', 0)} completed, {rounds.get('aborted', 0)} aborted, "
            f"{rounds.get('cancelled', 0)} cancelled",
        ),
        ("in progress", _current_round(rounds.get("current"))),
        ("last round", _last_round(rounds.get("last"))),
        (
            "abort reasons",
            ", ".join(f"{k}: {v}" for k, v in rounds.get("abort_reasons", {}).items()) or "-",
        ),
        ("resumed from", _resumed(document.get("resumed_from"), "resumed_from" in document)),
        ("samples", _samples(document.get("data"))),
        ("model digest", (document.get("model_digest") or "-")[:16]),
        ("accuracy", "-" if accuracy is None else f"{accuracy:.4f} (local held-out data)"),
        ("averages", _averages(document.get("learning"))),
        ("privacy", _privacy(document.get("privacy"))),
        ("blocked", _blocked(document.get("blocked_peers"))),
        ("refused", f"{document.get('refused_connections', 0)} connections/streams"),
        (
            "rejected",
            ", ".join(f"{k}: {v}" for k, v in document.get("rejected_messages", {}).items()) or "-",
        ),
    ]
    failures = (document.get("checkpoint_failures") or {}).get("count")
    if failures:
        last_error = document["checkpoint_failures"].get("last_error")
        rows.append(("checkpoints", f"{failures} could not be written (last: {last_error})"))
    for name, value in rows:
        summary.add_row(name, str(value))
    neighbours = Table(title="neighbours", expand=False)
    for column in ("peer", "address", "live", "rtt ms", "clock", "last seen", "in", "out"):
        neighbours.add_column(column)
    for n in document.get("neighbours", []):
        offset = n.get("clock_offset_ms")
        clock = "-" if offset is None else f"{offset / 1000:+.1f} s"
        if n.get("clock_ok") is False:
            clock += " (off)"
        live = "yes" if n.get("live") else "no"
        if n.get("live") and n.get("invitable") is False:
            live = "yes, not invited"
        if n.get("reached") == "relayed":
            live += ", relayed"  # only through a relay (docs/internet.md)
        neighbours.add_row(
            short_id(n["peer_id"]),
            (n.get("addrs") or ["(inbound)"])[0],
            live,
            "-" if n.get("rtt_ms") is None else f"{n['rtt_ms']:.1f}",
            clock,
            "-" if n.get("last_seen_s") is None else f"{n['last_seen_s']:.0f} s ago",
            human_bytes(n.get("bytes_in", 0)),
            human_bytes(n.get("bytes_out", 0)),
        )
    return Group(summary, neighbours)


def status(
    directory: Path | None = typer.Argument(None, help="The peer directory (local status)."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON status document."),
    watch: bool = typer.Option(
        False, "--watch", help=f"Refresh every {WATCH_INTERVAL_S:.0f} s until Ctrl-C."
    ),
    addr: str | None = typer.Option(
        None, "--addr", help="Ask a remote peer at this .../p2p/ID multiaddr."
    ),
    identity: Path | None = typer.Option(
        None, "--identity", help="With --addr: the peer directory whose identity to use."
    ),
) -> None:
    """Identity, neighbours, rounds, model digest, accuracy. Exits 1 if the daemon is not running."""
    if addr is None and directory is None:
        fail("give a peer directory, or --addr MULTIADDR --identity DIR", 2)
    if addr is not None and identity is None:
        fail("--addr needs --identity DIR (a peer directory the remote peer admits)", 2)

    def fetch() -> dict[str, Any]:
        if addr is not None:
            assert identity is not None
            return fetch_remote(addr, identity)
        assert directory is not None
        return fetch_local(directory)

    try:
        document = fetch()
    except NotRunning as exc:
        fail(str(exc))
    if not watch:
        if as_json:
            typer.echo(json.dumps(document, indent=2, sort_keys=True))
        else:
            from rich.console import Console

            Console().print(render(document))
        return

    from rich.live import Live

    try:
        with Live(render(document), refresh_per_second=4) as live:
            while True:
                time.sleep(WATCH_INTERVAL_S)
                try:
                    live.update(render(fetch()))
                except NotRunning as exc:
                    live.stop()
                    fail(str(exc))
    except KeyboardInterrupt:
        return
