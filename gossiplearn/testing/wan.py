"""Peer daemons across a (lab) WAN: ``gossiplearn run`` processes, one per network namespace of
a :class:`~gossiplearn.testing.netlab.NetLab`, or on 127.0.0.1 for the same run on loopback.

:func:`prepare` makes the peer directories (identities, configs admitting each other, digits
shards) with the lab's addresses; :class:`Cluster` starts a daemon per directory, reads their
status documents (inside each namespace), and stops them all whatever happens.
tests/peer/test_wan.py and benchmarks/wan_bench.py use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gossiplearn.crypto.identity import load_key_file
from gossiplearn.peer.config import IDENTITY_FILE, PeerConfig, load_config, save_config
from gossiplearn.testing.netlab import NetLab

#: Every daemon of a lab listens on this port of its own address (each has its own namespace).
LAB_PORT = 4001
#: The round interval of a peer that only answers invitations.
NEVER_S = 1e6
STOP_GRACE_S = 10.0


@dataclass
class PeerPlan:
    """What :func:`prepare` does for one peer beyond the defaults."""

    #: Dial the others by these names (``/dns4/NAME/...``) instead of their IPs: {index: name}.
    names: Mapping[int, str] = field(default_factory=dict)
    #: Relays this peer reserves a slot on (peer indices): peer.relays.
    relays: Sequence[int] = ()
    #: This peer offers a relay to the others: peer.relay_service.
    relay_service: bool = False
    #: False: nobody can dial it (its lab link accepts no inbound connections), so nobody
    #: bootstraps from its address; it is admitted by peer id only, and dials out itself.
    dialable: bool = True
    #: peer.announce (e.g. its /dns4/ name); with ``quiet``, it dials nobody itself
    #: (no bootstrap): the others must reach it at what it announces.
    announce: Sequence[str] = ()
    quiet: bool = False


def prepare(
    work_dir: Path,
    peers: int,
    *,
    lab: NetLab | None = None,
    interval_s: float = 2.0,
    group_size: int = 4,
    partition: str = "dirichlet:0.3",
    seed: int = 0,
    plans: Mapping[int, PeerPlan] | None = None,
    initiators: Sequence[int] | None = None,
    edit: Callable[[int, PeerConfig], None] | None = None,
) -> list[Path]:
    """``peers`` daemon directories admitting each other, training on digits shards; on
    ``lab``'s addresses if given (each listens on LAB_PORT of its own IP), else on 127.0.0.1.
    Each bootstraps from every other peer (so discovery does not depend on who comes up
    first). ``initiators``: only these peers invite (the others only answer); None: all.
    ``edit(i, config)`` may change anything before it is saved."""
    from gossiplearn.sim.config import SimConfig
    from gossiplearn.sim.daemons import prepare_peers

    plans = dict(plans or {})
    config = SimConfig(
        peers=peers,
        mode="process",
        interval_s=interval_s,
        group_size=group_size,
        partition=partition,
        seed=seed,
    )
    dirs = prepare_peers(Path(work_dir), config)
    ids = [load_key_file(d / IDENTITY_FILE).peer_id for d in dirs]
    local = [load_config(d).peer.listen[0] for d in dirs]
    for i, directory in enumerate(dirs):
        plan = plans.get(i, PeerPlan())
        peer_config = load_config(directory)
        if lab is not None:
            peer_config.peer.listen = [f"/ip4/{lab.ip(i)}/tcp/{LAB_PORT}"]

        def host(j: int, plan: PeerPlan = plan) -> str:
            if j in plan.names:
                return f"/dns4/{plan.names[j]}"
            if lab is not None:
                return f"/ip4/{lab.ip(j)}"
            return local[j].rsplit("/tcp/", 1)[0]

        def port(j: int) -> str:
            return str(LAB_PORT) if lab is not None else local[j].rsplit("/", 1)[1]

        peer_config.peer.bootstrap = [
            f"{host(j)}/tcp/{port(j)}/p2p/{ids[j]}"
            for j in range(peers)
            if j != i and plans.get(j, PeerPlan()).dialable and not plan.quiet
        ]
        peer_config.peer.announce = list(plan.announce)
        if initiators is not None and i not in initiators:
            peer_config.round.interval_s = NEVER_S
        if plan.relays:
            peer_config.peer.relays = [f"{host(j)}/tcp/{port(j)}/p2p/{ids[j]}" for j in plan.relays]
        if plan.relay_service:
            peer_config.peer.relay_service = True
        if edit is not None:
            edit(i, peer_config)
        save_config(directory, peer_config)
    return dirs


def fetch_status(port: int, timeout_s: float = 3.0) -> dict[str, Any] | None:
    try:
        url = f"http://127.0.0.1:{port}/status"
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return dict(json.load(response))
    except (OSError, ValueError):
        return None


class Cluster:
    """A ``gossiplearn run`` process per directory: in peer i's namespace of ``lab``, or here
    on 127.0.0.1 without one. ``with Cluster(dirs, lab) as cluster:`` stops them all
    (SIGTERM, then SIGKILL) whatever happens."""

    def __init__(
        self, dirs: Sequence[Path], lab: NetLab | None = None, *, start: bool = True
    ) -> None:
        """``start`` False: start none yet (:meth:`start`, :meth:`start_after`)."""
        self.dirs = list(dirs)
        self.lab = lab
        self.autostart = start
        self.ports = [load_config(d).status.port for d in self.dirs]
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * len(self.dirs)

    def __enter__(self) -> Cluster:
        try:
            if self.autostart:
                for i in range(len(self.dirs)):
                    self.start(i)
        except BaseException:
            self.stop_all()
            raise
        return self

    def start_after(self, first: Sequence[int], budget_s: float = 120.0) -> None:
        """Start ``first``, wait until each serves a fresh contribution and sees the others of
        ``first`` live, then start the rest: whoever invites then finds everyone ready."""
        for i in first:
            self.start(i)

        def ready(documents: list[dict[str, Any] | None]) -> bool:
            return all(
                (d := documents[i]) is not None
                and d["contribution_fresh"]
                and sum(n["live"] for n in d["neighbours"]) >= len(first) - 1
                for i in first
            )

        self.wait(ready, budget_s, "the first peers to be ready", only=first)
        for i in range(len(self.dirs)):
            if self.processes[i] is None:
                self.start(i)

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(self, i: int) -> None:
        directory = self.dirs[i]
        argv = [sys.executable, "-m", "gossiplearn.cli", "run", str(directory)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(directory / "stdout.log", "ab") as log:
            if self.lab is not None:
                process = self.lab.popen(i, argv, stdout=log, stderr=subprocess.STDOUT, env=env)
            else:
                process = subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
        self.processes[i] = process

    def status(self, i: int) -> dict[str, Any] | None:
        port = self.ports[i]
        if self.lab is None:
            return fetch_status(port)
        return self.lab.call(i, lambda: fetch_status(port), timeout_s=10)

    def statuses(self, only: Sequence[int] | None = None) -> list[dict[str, Any] | None]:
        wanted = range(len(self.dirs)) if only is None else only
        return [self.status(i) if i in wanted else None for i in range(len(self.dirs))]

    def check_alive(self) -> None:
        for i, process in enumerate(self.processes):
            if process is not None and process.poll() is not None:
                tail = (self.dirs[i] / "stdout.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"peer {i} exited (code {process.returncode}):\n{tail}")

    def wait(
        self,
        condition: Callable[[list[dict[str, Any] | None]], bool],
        budget_s: float,
        what: str,
        poll_s: float = 1.0,
        only: Sequence[int] | None = None,
    ) -> list[dict[str, Any] | None]:
        """Poll every status (or ``only`` those) until ``condition(documents)``;
        AssertionError after ``budget_s`` (a daemon that exits raises at once)."""
        deadline = time.monotonic() + budget_s
        documents: list[dict[str, Any] | None] = []
        while time.monotonic() < deadline:
            self.check_alive()
            documents = self.statuses(only)
            if condition(documents):
                return documents
            time.sleep(poll_s)
        raise AssertionError(f"timed out after {budget_s:.0f} s waiting for {what}")

    def stop(self, i: int) -> None:
        process = self.processes[i]
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        self.processes[i] = None

    def stop_all(self) -> None:
        for process in self.processes:
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for i in range(len(self.processes)):
            self.stop(i)


def rounds_done(document: dict[str, Any] | None) -> int:
    """Rounds a peer completed and took in (see sim/daemons.py's _rounds_done)."""
    if not document:
        return 0
    rounds = document["rounds"]
    return int(rounds["completed"]) - int(rounds.get("taking_in", 0))


def accuracy_after(document: dict[str, Any] | None, round_: int) -> float | None:
    """A peer's accuracy after its ``round_``-th round (1-based), from its status history."""
    history = (document or {}).get("rounds", {}).get("history", [])
    if len(history) < round_:
        return None
    return float(history[round_ - 1]["accuracy"])


@contextlib.contextmanager
def running(dirs: Sequence[Path], lab: NetLab | None = None) -> Iterator[Cluster]:
    with Cluster(dirs, lab) as cluster:
        yield cluster
