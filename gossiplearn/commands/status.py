"""``gossiplearn status DIR``: what a peer is doing, from its local endpoint or, with ``--addr``,
over libp2p from a remote peer that admits us."""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from gossiplearn.commands.common import fail, peer_directory
from gossiplearn.peer.config import ConfigError, load_config

WATCH_INTERVAL_S = 2.0


class NotRunning(Exception):
    pass


def fetch_local(directory: Path) -> dict[str, Any]:
    peer_directory(directory)
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


#: How long asking a remote peer may take in all (starting our host, connecting, asking and
#: reading the answer); a peer that answers at all does so within a second or two.
REMOTE_TIMEOUT_S = 15.0


def fetch_remote(
    address: str, identity_dir: Path, step: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """The status document of the peer at ``address``, asked over libp2p as the peer of
    ``identity_dir``. ``step`` is told what is being done (for a progress line). Raises
    NotRunning with one line naming the cause (unreachable, not admitted, no answer within
    REMOTE_TIMEOUT_S)."""
    from gossiplearn.crypto.identity import IdentityError, load_key_file
    from gossiplearn.peer.config import IDENTITY_FILE, dial_address_problem

    problem = dial_address_problem(address)
    if problem:
        fail(f"--addr: {problem}", 2)
    if not identity_dir.is_dir():
        fail(
            f"--identity {identity_dir}: not a directory; give a peer directory (from "
            "`gossiplearn init`) whose identity the remote peer admits",
            2,
        )
    try:
        identity = load_key_file(identity_dir / IDENTITY_FILE)
    except IdentityError as exc:
        fail(f"--identity: {exc}")
    tell = step or (lambda _: None)
    tell(f"connecting to {address}")
    _quiet_libp2p()

    import trio

    from gossiplearn.crypto.identity import public_key_from_peer_id
    from gossiplearn.peer.net.framing import read_frame, write_frame
    from gossiplearn.peer.net.host import STATUS_PROTOCOL, Admission, Host, split_p2p_multiaddr
    from gossiplearn.protocol import (
        ReplayGuard,
        Status,
        decode_envelope,
        encode_envelope,
        sequence_start,
    )

    target = public_key_from_peer_id(split_p2p_multiaddr(address)[1])
    done: list[str] = []  # the steps that completed: where a failure happened
    not_admitted = NotRunning(
        f"{identity.peer_id} (--identity {identity_dir}) is not admitted by {address}; "
        f"admit it there with `gossiplearn allow THAT_PEER_DIR {identity.peer_id}` and restart "
        "that daemon"
    )

    async def ask() -> bytes | None:
        host = Host(identity, ["/ip4/127.0.0.1/tcp/0"], Admission([target]))
        async with host.run():
            await host.connect(address)
            done.append("connected")
            tell(f"asking {address} for its status")
            stream = await host.open_stream(target, STATUS_PROTOCOL)
            done.append("stream")
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
            return await read_frame(stream, 1 << 20)  # type: ignore[arg-type]

    async def bounded() -> bytes | None:
        with trio.fail_after(REMOTE_TIMEOUT_S):
            return await ask()

    try:
        reply = trio.run(bounded)
    except trio.TooSlowError:
        doing = "waiting for its answer" if done else "connecting"
        raise NotRunning(
            f"no status from {address} within {REMOTE_TIMEOUT_S:.0f} s ({doing}); check that "
            "the peer runs and that its address is reachable from here"
        ) from None
    except Exception as exc:  # libp2p's errors arrive wrapped in exception groups
        if done:  # connected (the handshake passed), then the stream was refused or reset
            raise not_admitted from exc
        raise NotRunning(
            f"cannot connect to {address} ({_leaf_summary(exc)}); check that the peer runs "
            "there, under that peer id"
        ) from exc
    if reply is None:  # it closed the stream unanswered: how a peer refuses a stranger's
        raise not_admitted
    try:
        envelope = decode_envelope(
            reply,
            recipient=identity.public_key,
            now_ms=int(time.time() * 1000),
            replay=ReplayGuard(),
            expected_sender=target,
        )
    except Exception as exc:  # a forged, stale or garbled answer
        raise NotRunning(f"{address} answered with a message that does not verify ({exc})") from exc
    if not isinstance(envelope.body, Status):
        raise NotRunning(f"{address} answered with a {envelope.body.TYPE} message, not a status")
    return dict(json.loads(envelope.body.json))


def _quiet_libp2p() -> None:
    """libp2p logs its failures ("Failed to open stream to peer ...", 8 lines each) on loggers
    without handlers, which Python then prints to stderr: this command says what happened
    in one line of its own instead."""
    import logging

    import libp2p  # noqa: F401 - configures its logger first, so this setting stays

    for name in ("libp2p", ""):
        logger = logging.getLogger(name)
        logger.handlers[:] = [logging.NullHandler()]
    logging.getLogger("libp2p").propagate = False


def _leaf_summary(error: BaseException) -> str:
    """The innermost error of nested exception groups, as one short phrase."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if type(error).__name__ == "TooSlowError":  # trio's, from our own connect timeout
        return "no answer to the connection"
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:200]


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


#: What a row shows when the document does not carry its figure: a remote peer shares less
#: than the local endpoint serves (README.md, "Status document").
NOT_SHARED = "not shared"


def _rounds(rounds: dict[str, Any]) -> str:
    parts = [
        f"{rounds[key]} {key}" for key in ("completed", "aborted", "cancelled") if key in rounds
    ]
    return ", ".join(parts) if parts else NOT_SHARED


def _round_entry(entry: dict[str, Any]) -> str:
    """One round of a remote peer's ``with_you`` list, from whatever keys it has (a time
    ``X_at`` as an age, ``started_at`` and ``ended_at`` also as a duration)."""
    parts = []
    started, ended = entry.get("started_at"), entry.get("ended_at")
    for key, value in entry.items():
        if key.endswith("_at") and isinstance(value, int | float) and value > 1e9:
            parts.append(f"{key[:-3]} {_age(max(0.0, time.time() - float(value)))}")
        elif key == "group":
            parts.append(f"group {str(value)[:8]}")
        elif key == "members" and isinstance(value, list):
            parts.append(f"{len(value)} members")
        elif key == "seconds" and isinstance(value, int | float):
            parts.append(f"{value:.2f} s")
        elif isinstance(value, dict | list):
            continue  # nested figures do not fit on one line
        else:
            parts.append(f"{key} {value}")
    if isinstance(started, int | float) and isinstance(ended, int | float):
        parts.append(f"{float(ended) - float(started):.2f} s")
    return ", ".join(parts) or "-"


def render(document: dict[str, Any]) -> Any:
    """The status as a table; every figure the document does not carry (a remote peer shares
    only part of it) reads "not shared"."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from gossiplearn.peer.net.neighbours import short_id
    from gossiplearn.sim.report import human_bytes

    def shown(key: str, show: Callable[[Any], object], where: dict[str, Any] = document) -> str:
        return str(show(where[key])) if key in where else NOT_SHARED

    rounds = document.get("rounds", {})
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    rows: list[tuple[str, object]] = [
        ("peer id", shown("peer_id", str)),
        ("addresses", shown("addrs", lambda addrs: "\n".join(addrs) or "-")),
        ("uptime", shown("uptime_s", lambda seconds: f"{seconds:.0f} s")),
    ]
    if document.get("remote"):
        rows.append(("view", "remote: what this peer shares with the peers it admits"))
    if "waiting" in document:
        rows += [("waiting", w.get("message", "?")) for w in document["waiting"] or []]
    else:
        rows.append(("waiting", NOT_SHARED))
    rows += [
        ("rounds", _rounds(rounds) if "rounds" in document else NOT_SHARED),
        ("in progress", shown("current", _current_round, rounds)),
        ("last round", shown("last", _last_round, rounds)),
        (
            "abort reasons",
            shown(
                "abort_reasons",
                lambda reasons: ", ".join(f"{k}: {v}" for k, v in reasons.items()) or "-",
                rounds,
            ),
        ),
        ("resumed from", shown("resumed_from", lambda resumed: _resumed(resumed, True))),
        ("samples", shown("data", _samples)),
        ("model digest", shown("model_digest", lambda digest: (digest or "-")[:16])),
        (
            "accuracy",
            shown(
                "accuracy",
                lambda accuracy: (
                    "-" if accuracy is None else f"{accuracy:.4f} (local held-out data)"
                ),
            ),
        ),
        ("averages", shown("learning", _averages)),
        ("privacy", shown("privacy", _privacy)),
        ("blocked", shown("blocked_peers", _blocked)),
        ("refused", shown("refused_connections", lambda count: f"{count} connections/streams")),
        (
            "rejected",
            shown(
                "rejected_messages",
                lambda rejected: ", ".join(f"{k}: {v}" for k, v in rejected.items()) or "-",
            ),
        ),
    ]
    failures = (document.get("checkpoint_failures") or {}).get("count")
    if failures:
        last_error = document["checkpoint_failures"].get("last_error")
        rows.append(("checkpoints", f"{failures} could not be written (last: {last_error})"))
    if isinstance(rounds.get("with_you"), list):
        with_you = rounds["with_you"]
        rows.append(("rounds with you", str(len(with_you)) if with_you else "none yet"))
        rows += [("", _round_entry(entry)) for entry in with_you[-10:] if isinstance(entry, dict)]
    if "neighbours" not in document:
        rows.append(("neighbours", NOT_SHARED))
    for name, value in rows:  # Text: a peer's strings are shown as they are, never as markup
        summary.add_row(name, Text(str(value)))
    if "neighbours" not in document:
        return summary
    neighbours = Table(title="neighbours", expand=False)
    for column in ("peer", "address", "live", "rtt ms", "clock", "last seen", "in", "out"):
        neighbours.add_column(column)
    for n in document["neighbours"]:
        offset = n.get("clock_offset_ms")
        clock = "-" if offset is None else f"{offset / 1000:+.1f} s"
        if n.get("clock_ok") is False:
            clock += " (off)"
        live = "yes" if n.get("live") else "no"
        if n.get("live") and n.get("invitable") is False:
            live = "yes, not invited"
        cells = (
            short_id(n["peer_id"]),
            (n.get("addrs") or ["(inbound)"])[0],
            live,
            "-" if n.get("rtt_ms") is None else f"{n['rtt_ms']:.1f}",
            clock,
            "-" if n.get("last_seen_s") is None else f"{n['last_seen_s']:.0f} s ago",
            human_bytes(n.get("bytes_in", 0)),
            human_bytes(n.get("bytes_out", 0)),
        )
        neighbours.add_row(*(Text(str(cell)) for cell in cells))
    return Group(summary, neighbours)


class _StopSignal:
    """SIGTERM ends ``status --watch`` as Ctrl-C does (exit 0, everything printed so far
    flushed). Raised as KeyboardInterrupt where the command waits; while a remote fetch runs
    in trio it is only noted, and raised once the fetch is over."""

    def __init__(self) -> None:
        self.fetching = False
        self.pending = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self.fetching:
            self.pending = True
        else:
            raise KeyboardInterrupt

    def fetch(self, fetch: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        self.fetching = True
        try:
            return fetch()
        finally:
            self.fetching = False
            if self.pending:
                raise KeyboardInterrupt


@contextmanager
def _progress(shown: bool) -> Iterator[Callable[[str], None]]:
    """A transient "connecting to ..." line on a terminal's stderr; nothing elsewhere."""
    if not shown:
        yield lambda _: None
        return
    from rich.console import Console

    with Console(stderr=True).status("starting") as line:
        yield lambda text: line.update(f"{text} ...")


def status(
    directory: Path | None = typer.Argument(
        None, help="The peer directory (local status).", metavar="DIR"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON status document."),
    watch: bool = typer.Option(
        False,
        "--watch",
        help=f"Refresh every {WATCH_INTERVAL_S:.0f} s until Ctrl-C or SIGTERM (exit 0). Into a "
        "pipe or a file, each refresh is appended as it comes (with --json: one document a "
        "line).",
    ),
    addr: str | None = typer.Option(
        None, "--addr", help="Ask a remote peer at this .../p2p/ID multiaddr."
    ),
    identity: Path | None = typer.Option(
        None, "--identity", help="With --addr: the peer directory whose identity to use."
    ),
) -> None:
    """Identity, neighbours, rounds, model digest, accuracy. Exits 1 if the daemon is not
    running (with --addr: if the peer cannot be reached, does not admit us, or does not answer
    within 15 s)."""
    if addr is None and directory is None:
        fail("give a peer directory, or --addr MULTIADDR --identity DIR", 2)
    if addr is not None and identity is None:
        fail("--addr needs --identity DIR (a peer directory the remote peer admits)", 2)
    stop = _StopSignal() if watch else None

    def fetch(step: Callable[[str], None] | None = None) -> dict[str, Any]:
        if addr is not None:
            assert identity is not None
            return fetch_remote(addr, identity, step)
        assert directory is not None
        return fetch_local(directory)

    try:
        with _progress(addr is not None and sys.stderr.isatty()) as step:
            document = fetch(step)
    except NotRunning as exc:
        fail(str(exc))
    if stop is None:
        if as_json:
            typer.echo(json.dumps(document, indent=2, sort_keys=True))
        else:
            from rich.console import Console

            Console().print(render(document))
        return
    try:
        if as_json or not sys.stdout.isatty():
            _watch_appending(document, lambda: stop.fetch(fetch), as_json)
        else:
            _watch_live(document, lambda: stop.fetch(fetch))
    except KeyboardInterrupt:
        sys.stdout.flush()
        return


def _watch_live(document: dict[str, Any], fetch: Callable[[], dict[str, Any]]) -> None:
    """On a terminal: one table, redrawn in place."""
    from rich.live import Live

    with Live(render(document), refresh_per_second=4) as live:
        while True:
            time.sleep(WATCH_INTERVAL_S)
            try:
                live.update(render(fetch()))
            except NotRunning as exc:
                live.stop()
                fail(str(exc))


def _watch_appending(
    document: dict[str, Any], fetch: Callable[[], dict[str, Any]], as_json: bool
) -> None:
    """Into a pipe or a file (or with --json): each refresh appended whole, in one write,
    and flushed at once, so a reader sees it now and a stop never cuts one in half."""
    import io

    from rich.console import Console

    width = Console(file=sys.stdout).width  # COLUMNS, or 80 off a terminal
    while True:
        if as_json:
            text = json.dumps(document, sort_keys=True) + "\n"
        else:
            block = Console(file=io.StringIO(), width=width)
            block.print(f"status at {time.strftime('%Y-%m-%d %H:%M:%S')}")
            block.print(render(document))
            block.print()
            text = block.file.getvalue()  # type: ignore[attr-defined]
        sys.stdout.write(text)
        sys.stdout.flush()
        time.sleep(WATCH_INTERVAL_S)
        try:
            document = fetch()
        except NotRunning as exc:
            fail(str(exc))
