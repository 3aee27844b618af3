"""End to end: three real peer daemons on 127.0.0.1, each a separate process, as an
organization runs them (`gossiplearn init`, `allow`, `run`, `status`).

Shows: rounds complete with every neighbour live; after a round the members' backbones are
bit-identical and their personal heads differ; a peer nobody admits is refused and counted;
SIGTERM exits 0 within 5 s with a checkpoint that a restart resumes exactly; `status` on a
stopped daemon exits 1 with a clear message.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio

from gossiplearn.crypto.identity import load_key_file, public_key_from_peer_id
from gossiplearn.peer.config import load_config, save_config
from gossiplearn.peer.net.host import ROUND_PROTOCOL, Admission, Host, split_p2p_multiaddr
from gossiplearn.peer.status import REMOTE_KEYS
from gossiplearn.protocol import Invite, encode_envelope

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

CLI = [sys.executable, "-m", "gossiplearn.cli"]
PEERS = 3
ROUNDS_WANTED = 2
STARTUP_BUDGET_S = 60.0
STOP_BUDGET_S = 5.0


def cli(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, timeout=60, check=check
    )


def status(directory: Path) -> dict[str, Any]:
    return json.loads(cli("status", directory, "--json").stdout)


def start(directory: Path) -> subprocess.Popen[bytes]:
    log = open(directory / "stdout.log", "ab")  # noqa: SIM115 - owned by the process
    return subprocess.Popen([*CLI, "run", str(directory)], stdout=log, stderr=subprocess.STDOUT)


def wait_for(condition, budget_s: float, what: str, poll_s: float = 0.5):
    deadline = time.monotonic() + budget_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except (subprocess.CalledProcessError, json.JSONDecodeError) as exc:
            last_error = exc
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {budget_s} s waiting for {what} ({last_error!r})")


def stop(process: subprocess.Popen[bytes]) -> float:
    """SIGTERM; returns the seconds until the process exited (asserting exit code 0)."""
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=30)
    elapsed = time.monotonic() - began
    assert code == 0, f"exit code {code}"
    return elapsed


@pytest.fixture
def network(tmp_path: Path):
    """Three initialized peers admitting each other, with quick rounds; yields their dirs."""
    dirs = [tmp_path / f"org-{i}" for i in range(PEERS)]
    addresses = []
    for i, directory in enumerate(dirs):
        out = cli("init", directory, "--dataset", "digits", "--shard", f"{i}/{PEERS}").stdout
        address = next(line.split()[1] for line in out.splitlines() if line.startswith("address:"))
        addresses.append(address)
    for i, directory in enumerate(dirs):
        cli("allow", directory, *[a for j, a in enumerate(addresses) if j != i])
        config = load_config(directory)
        config.round.interval_s = 1.0
        config.discovery.ping_interval_s = 1.0
        save_config(directory, config)
    processes: dict[Path, subprocess.Popen[bytes]] = {}
    try:
        yield dirs, addresses, processes
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def send_invite_as_stranger(stranger_dir: Path, target_address: str) -> None:
    """A peer that no one admits connects to ``target`` and sends it a valid INVITE."""
    identity = load_key_file(stranger_dir / "identity.key")
    target = public_key_from_peer_id(split_p2p_multiaddr(target_address)[1])

    async def attempt() -> None:
        host = Host(identity, ["/ip4/127.0.0.1/tcp/0"], Admission([target]))
        async with host.run():
            try:
                await host.connect(target_address)
                stream = await host.open_stream(target, ROUND_PROTOCOL)
                now = int(time.time() * 1000)
                invite = Invite(
                    (identity.public_key, target, os.urandom(32)), b"s" * 32, 10, 20, now + 30_000
                )
                frame = encode_envelope(
                    identity,
                    identity.public_key,
                    target,
                    invite,
                    group=os.urandom(16),
                    seq=1,
                    ts=now,
                )
                await host.send_frame(target, stream, frame)
                await stream.close()
            except Exception:
                pass  # refused: reset, closed connection or EOF are all fine outcomes
            await trio.sleep(0.5)

    trio.run(attempt)


def test_three_peers_average_securely_and_survive_restart(network, tmp_path: Path):
    dirs, addresses, processes = network
    for directory in dirs:
        processes[directory] = start(directory)

    def all_ready() -> list[dict[str, Any]] | None:
        docs = [status(d) for d in dirs]
        # Learning, too: local held-out accuracy well above chance (10 classes) by then.
        ready = all(
            doc["rounds"]["completed"] >= ROUNDS_WANTED
            and sum(n["live"] for n in doc["neighbours"]) == PEERS - 1
            and doc["accuracy"] is not None
            and doc["accuracy"] > 0.5
            for doc in docs
        )
        return docs if ready else None

    docs = wait_for(all_ready, STARTUP_BUDGET_S, f"{ROUNDS_WANTED} rounds at every peer")
    for doc in docs:
        assert {
            "peer_id",
            "addrs",
            "uptime_s",
            "neighbours",
            "rounds",
            "refused_connections",
            "model_digest",
            "accuracy",
        } <= set(doc)
        assert {n["peer_id"] for n in doc["neighbours"]} == {
            other["peer_id"] for other in docs if other is not doc
        }
        assert doc["accuracy"] is not None and doc["accuracy"] > 0.5

    # After a round, every member that applied the average holds the same backbone (the
    # daemon waits for its round, so the average lands exactly); one that refused it (it
    # would hurt its own validation loss) keeps its own.
    by_group: dict[str, set[str]] = {}
    for doc in docs:
        for entry in doc["rounds"]["history"]:
            if entry["accepted"]:
                by_group.setdefault(entry["group"], set()).add(entry["backbone_digest"])
    shared = [
        g
        for g, digests in by_group.items()
        if sum(g in {e["group"] for e in doc["rounds"]["history"] if e["accepted"]} for doc in docs)
        == PEERS
    ]
    assert shared, "no round in every peer's history"
    assert all(len(by_group[g]) == 1 for g in shared), "backbones differ after a round"
    assert len({doc["head_digest"] for doc in docs}) == PEERS, "personal heads should differ"

    # An admitted peer can ask for the status remotely, over libp2p.
    remote = json.loads(
        cli("status", "--addr", addresses[0], "--identity", dirs[1], "--json").stdout
    )
    assert remote["peer_id"] == docs[0]["peer_id"] and remote["remote"] is True
    # ...but less of it than the local document: no samples, neighbours or accuracy.
    assert set(remote) == set(REMOTE_KEYS)
    asker = load_key_file(dirs[1] / "identity.key").peer_id
    assert all(asker in entry["members"] for entry in remote["rounds"]["with_you"])
    # Prometheus text on /metrics.
    port = load_config(dirs[0]).status.port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'gossiplearn_rounds_total{outcome="finished"}' in metrics
    assert "gossiplearn_refused_connections" in metrics
    assert "process_open_fds" in metrics and "gossiplearn_trio_tasks" in metrics
    assert docs[0]["resumed_from"] is None  # fresh start
    assert all(docs[0]["process"][k] > 0 for k in ("rss_bytes", "open_fds", "trio_tasks"))

    # A peer on nobody's allowlist is refused and counted, and changes nothing.
    stranger = tmp_path / "stranger"
    cli("init", stranger, "--allow", addresses[0])
    before = status(dirs[0])
    send_invite_as_stranger(stranger, addresses[0])
    after = wait_for(
        lambda: (
            (doc := status(dirs[0]))["refused_connections"] > before["refused_connections"] and doc
        ),
        10,
        "the stranger to be refused",
    )
    stranger_id = load_key_file(stranger / "identity.key").peer_id
    assert stranger_id not in {n["peer_id"] for n in after["neighbours"]}
    assert not any(stranger_id in e["members"] for e in after["rounds"]["history"])

    # SIGTERM: each exits 0 within 5 s, leaving a checkpoint.
    for directory in dirs:
        assert stop(processes[directory]) < STOP_BUDGET_S
        sidecar = json.loads((directory / "checkpoints" / "model.json").read_text())
        assert sidecar["rounds_completed"] >= ROUNDS_WANTED

    # Stopped: status exits 1 with a one-line explanation.
    stopped = cli("status", dirs[0], check=False)
    assert stopped.returncode == 1
    assert "not running" in stopped.stderr and len(stopped.stderr.strip().splitlines()) == 1

    # Restarted (alone, so no round can change it meanwhile), each resumes its checkpoint.
    for directory in dirs:
        sidecar = json.loads((directory / "checkpoints" / "model.json").read_text())
        processes[directory] = start(directory)
        resumed = wait_for(lambda d=directory: status(d), 30, "the restarted daemon")
        assert resumed["rounds"]["completed"] == sidecar["rounds_completed"]
        assert resumed["model_digest"] == sidecar["model_digest"]
        assert resumed["resumed_from"]["rounds_completed"] == sidecar["rounds_completed"]
        assert resumed["resumed_from"]["model_digest"] == sidecar["model_digest"]
        assert stop(processes[directory]) < STOP_BUDGET_S
