"""``gossiplearn sim --mode process --ray ADDRESS``: the real daemons of process mode, each
started by a Ray actor on whichever node of a Ray cluster has room for it.

Ray only places and supervises: each peer is one actor holding ``--peer-cpus`` CPUs and
``--peer-gpus`` GPUs (fractions allowed) of its node, which starts ``gossiplearn run`` there
as a child process, the same daemon local process mode starts. The launcher asks every actor
for its node's IP and two free ports on it, writes the peer directories as process mode does
(identities, allowlists of each other, bootstrap from the next peers, the daemons listening
on their nodes' addresses), ships each directory to its actor and reads the daemons' status
documents through the actors (a daemon serves its status on 127.0.0.1 only). The results,
the stopping rule and Ctrl-C / SIGTERM are those of local process mode; on the way out every
daemon gets SIGTERM, its log comes back to ``OUT/peers/peer-I/stdout.log`` and every actor is
killed (a daemon also dies with its actor: PR_SET_PDEATHSIG). ``OUT/peers/peer-I/placement.json``
says where each ran (node IP, Ray node id, directory there). An actor whose node died is a
peer that churned: counted in ``peers_lost``, its last status kept, the rest go on.

Ray is imported only here, and only for ``--ray`` (``pip install 'gossiplearn[ray]'``).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gossiplearn.sim.config import Progress, SimConfig
from gossiplearn.sim.daemons import (
    Patience,
    _budget_s,
    _partial,
    _report,
    _result_from_documents,
    _rounds_done,
    prepare_peers,
)
from gossiplearn.sim.results import MethodResult

MISSING = "--ray needs Ray: pip install 'gossiplearn[ray]'"
#: How long a call on an actor may take before the peer counts as unreachable this poll.
_CALL_S = 10.0


def import_ray() -> Any:
    """The ray module, or a RuntimeError naming the extra."""
    try:
        import ray
    except ImportError:
        raise RuntimeError(MISSING) from None
    return ray


class PeerHost:
    """One peer's daemon on a Ray node (used as a Ray actor: see :func:`_actor_class`)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: Any = None
        self.directory: Path | None = None
        self.status_port = 0

    def place(self) -> tuple[str, int, int, str]:
        """(node IP, free libp2p port, free status port, node id) where this actor runs."""
        import ray

        from gossiplearn.peer.net.ports import free_port

        host = ray.util.get_node_ip_address()
        node = ray.get_runtime_context().get_node_id()
        return host, free_port(host), free_port(), node

    def start(self, files: dict[str, bytes], status_port: int) -> str:
        """Write the peer directory on this node and start its daemon; returns the directory."""
        import os
        import subprocess
        import sys
        import tempfile

        directory = Path(tempfile.mkdtemp(prefix=f"gossiplearn-peer-{self.index}-"))
        for name, content in files.items():
            path = directory / name
            path.write_bytes(content)
            if name.endswith(".key"):
                path.chmod(0o600)
        self.directory, self.status_port = directory, status_port
        with open(directory / "stdout.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gossiplearn.cli", "run", str(directory)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                preexec_fn=_die_with_parent,
            )
        return str(directory)

    def status(self) -> tuple[dict[str, Any] | None, int | None]:
        """(the daemon's status document or None, its exit code or None while it runs)."""
        from gossiplearn.sim.daemons import _fetch_status

        code = self.process.poll() if self.process else None
        return (_fetch_status(self.status_port) if code is None else None), code

    def stop(self, grace_s: float = 10.0) -> bytes:
        """SIGTERM the daemon (SIGKILL after ``grace_s``); returns its log."""
        import subprocess

        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.directory is None:
            return b""
        return (self.directory / "stdout.log").read_bytes()[-1_000_000:]


def _die_with_parent() -> None:
    """In the daemon, before exec: SIGTERM it when its actor's process dies (Linux)."""
    import contextlib
    import ctypes

    # Not Linux: ray.kill of the actor leaves the daemon to its SIGTERM from stop().
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def connect(address: str) -> bool:
    """Connect to the Ray cluster at ``address`` ("auto": the one `ray start` set up on this
    machine; "local": start one here for this run). True if this call connected (the caller
    disconnects). Keeps this process's SIGTERM handler (ray.init replaces it)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    handler = signal.getsignal(signal.SIGTERM)
    ray.init(
        address=None if address == "local" else address,
        logging_level="WARNING",
        log_to_driver=False,
    )
    signal.signal(signal.SIGTERM, handler)
    return True


def run_ray_process(
    config: SimConfig,
    out_dir: Path,
    progress: Progress | None = None,
    *,
    address: str = "auto",
    peer_cpus: float = 1.0,
    peer_gpus: float = 0.0,
    timeout_s: float | None = None,
    on_result: Callable[[MethodResult], None] | None = None,
    steps: dict[str, float | None] | None = None,
) -> MethodResult:
    """Process mode with every daemon placed by Ray; stops them all when every peer still
    there has done ``config.rounds`` rounds, on timeout, or on Ctrl-C / SIGTERM.
    ``on_result`` and ``steps``: as for :func:`~gossiplearn.sim.daemons.run_process`."""
    ray = import_ray()
    started = time.perf_counter()
    connected = connect(address)
    actor = ray.remote(max_restarts=0, max_task_retries=0)(PeerHost)
    hosts = [
        actor.options(num_cpus=peer_cpus, num_gpus=peer_gpus, name=None).remote(i)
        for i in range(config.peers)
    ]
    lost: set[int] = set()
    documents: list[dict[str, Any] | None] = [None] * config.peers
    dirs: list[Path] = []
    reported = [0]
    try:
        # Placement: waits until Ray found room for every actor (or the budget runs out).
        places = _get(ray, [h.place.remote() for h in hosts], _budget_s(config, timeout_s))
        dirs = prepare_peers(
            out_dir, config, [(ip, port, status) for ip, port, status, _ in places]
        )
        files = [{p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} for d in dirs]
        remote_dirs = _get(
            ray, [h.start.remote(f, s[2]) for h, f, s in zip(hosts, files, places, strict=True)]
        )
        for directory, (ip, _, _, node), remote in zip(dirs, places, remote_dirs, strict=True):
            placement = {"ip": ip, "node": node, "directory": remote}
            (directory / "placement.json").write_text(json.dumps(placement) + "\n")
        patience = Patience(timeout_s=timeout_s)
        while True:
            _poll(ray, hosts, lost, documents, dirs)
            live = [documents[i] for i in range(config.peers) if i not in lost]
            if not live:
                raise RuntimeError("every peer's Ray node died")
            _report(documents, config.rounds, progress)
            _partial(on_result, live, config.rounds, reported, started, lambda: steps)
            if min(_rounds_done(live)) >= config.rounds:
                break
            where = f"on their nodes, placement.json in {out_dir}/peers/* says where"
            if patience.gives_up(live, config.rounds, where):
                break
            time.sleep(1.0)
    finally:
        _stop_all(ray, hosts, lost, dirs)
        if connected:
            ray.shutdown()
    wall = time.perf_counter() - started
    result = _result_from_documents(documents, config.rounds, wall, steps)
    result.extra["peers_lost"] = len(lost)
    return result


def _get(ray: Any, refs: list[Any], timeout_s: float = _CALL_S) -> list[Any]:
    ready, waiting = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    if waiting:
        raise RuntimeError(
            f"Ray placed {len(ready)} of {len(refs)} peers in {timeout_s:.0f} s: the cluster "
            "lacks room for --peer-cpus / --peer-gpus per peer (see `ray status`)"
        )
    return list(ray.get(refs))


def _poll(
    ray: Any,
    hosts: Sequence[Any],
    lost: set[int],
    documents: list[dict[str, Any] | None],
    dirs: Sequence[Path],
) -> None:
    """Refresh every live peer's status; a dead actor (its node died) is a lost peer."""
    asked = {i: hosts[i].status.remote() for i in range(len(hosts)) if i not in lost}
    for i, ref in asked.items():
        try:
            document, code = ray.get(ref, timeout=_CALL_S)
        except ray.exceptions.GetTimeoutError:
            continue  # a busy node: ask again next time
        except ray.exceptions.RayActorError:
            lost.add(i)  # its node (or its actor) died: a peer that churned
            continue
        if code is not None:
            raise RuntimeError(f"peer {i} exited early (code {code}); see {dirs[i] / 'stdout.log'}")
        documents[i] = document or documents[i]


def _stop_all(ray: Any, hosts: Sequence[Any], lost: set[int], dirs: Sequence[Path]) -> None:
    """SIGTERM every daemon through its actor, bring its log home, kill every actor."""
    logs = {i: hosts[i].stop.remote() for i in range(len(hosts)) if i not in lost}
    for i, ref in logs.items():
        try:
            log = ray.get(ref, timeout=20.0)
        except (ray.exceptions.RayError, KeyboardInterrupt):
            continue
        if i < len(dirs):
            (dirs[i] / "stdout.log").write_bytes(log)
    for host in hosts:
        ray.kill(host, no_restart=True)
