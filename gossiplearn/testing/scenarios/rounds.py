"""The secure averaging round's cost: bytes on the wire and CPU over the plaintext butterfly.

- :func:`memory_figures`: k protocol machines over the in-memory network in this process (no
  latency), so CPU time is the protocol's own: encoding, masking, sharding, signing and
  verifying; secure rounds alternated with the same rounds unmasked
  (:class:`~gossiplearn.protocol.plaintext.PlaintextNode`).
- :func:`libp2p_figures`: 4 peer processes on 127.0.0.1 (this module, run with ``--child``),
  each a libp2p host driving the same machine through the daemon's round engine (no
  training); peer 0 times the rounds it initiates, secure and plain, and one libp2p stream
  and one raw TCP connection between two of the processes for comparison.

benchmarks/round_bench.py prints these (its docstring lists every figure); round_sizes.py and
compare_hivemind.py time :func:`libp2p_rounds` too. tests/scenarios/test_rounds.py runs both
with small vectors.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import trio

from gossiplearn.crypto import Identity
from gossiplearn.peer.net.ports import free_port
from gossiplearn.protocol.config import RoundConfig
from gossiplearn.protocol.events import RoundAborted, RoundCancelled, RoundFinished, Send
from gossiplearn.protocol.node import Node
from gossiplearn.protocol.plaintext import PlaintextNode
from gossiplearn.sim.memnet import MemoryNetwork

if TYPE_CHECKING:
    from gossiplearn.peer.net.host import Host

#: Each peer process of :func:`libp2p_rounds`: this module, run with ``--child``.
CHILD_MODULE = "gossiplearn.testing.scenarios.rounds"


@dataclass
class MemoryRound:
    cpu_s: float
    bytes_per_member: float
    confirm_bytes_per_member: float  # the agreement step's frames
    hops: float  # the round's virtual duration in network latencies: sequential message steps


def run_round(
    node_class: type[Node], k: int, vectors: np.ndarray, seed: int, ring: int = 32
) -> MemoryRound:
    """One round of k members in a ``ring``-bit ring over a network with a 1 ms latency and no
    jitter."""
    net = MemoryNetwork(seed=seed, latency_ms=1.0)
    confirm_bytes = 0

    def count(sender: bytes, send: Send) -> None:
        nonlocal confirm_bytes
        if send.kind == "CONFIRM":
            confirm_bytes += len(send.frame)

    net.intercept = count
    config = RoundConfig(max_group_size=k, round_timeout_ms=3_600_000, ring_bits=ring)
    for i in range(k):
        node = node_class(
            Identity(bytes([seed % 256, i + 1]) * 16),
            config,
            rng=random.Random(seed * 100 + i),
            now_ms=int(net.now_ms),
        )
        node.set_contribution(vectors[i], 1, b"b" * 32)
        net.add(node)
    keys = list(net.nodes)
    gc.collect()
    start = time.process_time()
    started_ms = net.now_ms
    net.start_round(keys[0])
    net.run()
    cpu = time.process_time() - start
    finished = [o for key in keys for o in net.outcomes[key] if isinstance(o, RoundFinished)]
    if len(finished) != k:
        raise RuntimeError(f"round did not finish at every member: {dict(net.outcomes)}")
    hops = max(o.stats.ended_ms for o in finished) - started_ms  # 1 ms per hop
    return MemoryRound(cpu, sum(net.bytes_sent[key] for key in keys) / k, confirm_bytes / k, hops)


def memory_figures(k: int, n: int, repeats: int = 2, ring: int = 32) -> dict[str, Any]:
    """round_bench's line for groups of ``k`` and vectors of ``n``: the secure round (in a
    ``ring``-bit ring) against the plaintext one, the minimum CPU over ``repeats`` alternating
    runs after a warm-up."""
    vectors = np.random.default_rng(n + k).normal(0, 1, size=(k, n)).astype(np.float32)
    # The first big round in a process pays for growing the heap (page faults); an untimed
    # warm-up keeps that out of whichever variant would run first.
    run_round(PlaintextNode, k, vectors, seed=99)
    secure, plain = [], []
    for seed in range(repeats):
        secure.append(run_round(Node, k, vectors, seed, ring))
        plain.append(run_round(PlaintextNode, k, vectors, seed))
    del vectors
    gc.collect()
    secure_cpu = min(r.cpu_s for r in secure)
    plain_cpu = min(r.cpu_s for r in plain)
    return {
        "bench": "round",
        "net": "memory",
        "ring": ring,
        "k": k,
        "n": n,
        "bytes_per_member_over_model": round(secure[0].bytes_per_member / (4 * n), 4),
        "confirm_bytes_per_member": round(secure[0].confirm_bytes_per_member),
        # INVITE, ACCEPT, ROSTER, READY, PART, REDUCED, CONFIRM: sequential message steps,
        # each one latency (READY is round v3's roster agreement, before any masked data).
        "hops": secure[0].hops,
        "secure_over_plain_cpu": round(secure_cpu / plain_cpu, 3),
        "secure_cpu_s": round(secure_cpu, 3),
        "plain_cpu_s": round(plain_cpu, 3),
    }


LIBP2P_PEERS = 4
SINK_PROTOCOL = "/gossiplearn/bench-sink/1.0.0"
STOP_PROTOCOL = "/gossiplearn/bench-stop/1.0.0"
#: Peer 0 asks every member before each round: answered once the member is out of the last
#: round and holds its next contribution (hivemind's peers likewise say "ready" before a step).
READY_PROTOCOL = "/gossiplearn/bench-ready/1.0.0"
STREAM_MIB = 64


def libp2p_rounds(
    n: int, rounds: int, variant: str, transport: str = "bulk", ring: int = 32
) -> Any:
    """Start 4 fresh peer processes, run 1 + ``rounds`` rounds of ``variant`` ("secure" or
    "plain") in a ``ring``-bit ring, initiated by peer 0, and return its figures: round_s
    (median of the timed rounds), bytes_sent, stream_mb_s, tcp_mb_s, rounds,
    bulk_frames_sent, bulk_fallbacks."""
    seeds = [os.urandom(32).hex() for _ in range(LIBP2P_PEERS)]
    ports = [str(free_port()) for _ in seeds]
    tcp_port = str(free_port())
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                CHILD_MODULE,
                "--child",
                str(i),
                "--seeds",
                ",".join(seeds),
                "--ports",
                ",".join(ports),
                "--variant",
                variant,
                "--vector",
                str(n),
                "--rounds",
                str(rounds),
                "--transport",
                transport,
                "--tcp-port",
                tcp_port,
                "--ring",
                str(ring),
            ],
            stdout=subprocess.PIPE if i == 0 else subprocess.DEVNULL,
            text=True,
        )
        for i in range(LIBP2P_PEERS)
    ]
    try:
        output, _ = children[0].communicate(timeout=1800)
        for child in children[1:]:
            child.wait(timeout=60)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    return json.loads(output.strip().splitlines()[-1])


def libp2p_figures(n: int, rounds: int, transport: str = "bulk") -> dict[str, Any]:
    """Both variants with fresh processes each: round_bench's line for this n."""
    figures = {
        variant: libp2p_rounds(n, rounds, variant, transport) for variant in ("secure", "plain")
    }
    secure, plain = figures["secure"], figures["plain"]
    model_mb = 4 * n / 1e6
    round_mb_s = model_mb / secure["round_s"]
    # Wire bytes of the whole round (every member sends what the initiator sends, within
    # framing) per second, against one raw TCP connection between two of the processes.
    wire_mb_s = LIBP2P_PEERS * secure["bytes_sent"] / 1e6 / secure["round_s"]
    return {
        "bench": "round",
        "net": "libp2p",
        "transport": transport,
        "k": LIBP2P_PEERS,
        "n": n,
        "secure_round_s": round(secure["round_s"], 3),
        "plain_round_s": round(plain["round_s"], 3),
        "secure_over_plain_time": round(secure["round_s"] / plain["round_s"], 3),
        "bytes_per_member_over_model": round(secure["bytes_sent"] / (4 * n), 4),
        "round_model_mb_s": round(round_mb_s, 1),
        "stream_mb_s": round(secure["stream_mb_s"], 1),
        "round_over_stream": round(round_mb_s / secure["stream_mb_s"], 3),
        "round_wire_mb_s": round(wire_mb_s, 1),
        "tcp_mb_s": round(secure["tcp_mb_s"], 1),
        "round_wire_over_tcp": round(wire_mb_s / secure["tcp_mb_s"], 3),
        "bulk_frames_sent": secure["bulk_frames_sent"],
        "bulk_fallbacks": secure["bulk_fallbacks"],
    }


async def libp2p_child(args: argparse.Namespace) -> None:
    """One peer process: a host, the round engine, a synthetic backbone. Peer 0 measures."""
    from gossiplearn.peer.heap import keep_freed_memory
    from gossiplearn.peer.net.engine import RoundEngine
    from gossiplearn.peer.net.host import ROUND_PROTOCOL, Admission, Host

    keep_freed_memory()  # as the daemon does by default (peer.keep_freed_memory)

    identities = [Identity(bytes.fromhex(s)) for s in args.seeds.split(",")]
    ports = args.ports.split(",")
    me = identities[args.child]
    keys = [identity.public_key for identity in identities]
    admission = Admission(keys)
    host = Host(me, [f"/ip4/127.0.0.1/tcp/{ports[args.child]}"], admission)
    node_class = PlaintextNode if args.variant == "plain" else Node
    node = node_class(
        me,
        RoundConfig(max_group_size=len(keys), round_timeout_ms=600_000, ring_bits=args.ring),
        admitted=admission,
        now_ms=int(time.time() * 1000),
    )
    outcome: dict[str, object] = {}
    round_over = trio.Event()
    vector = np.random.default_rng(args.child).normal(0, 1, args.vector).astype(np.float32)
    fresh = trio.Event()  # a new contribution is needed: the last one was spent

    def on_action(action: object) -> None:
        nonlocal round_over
        if isinstance(action, RoundFinished | RoundAborted | RoundCancelled):
            outcome["last"] = action
            round_over.set()
            fresh.set()

    async def keep_contributing() -> None:
        # A contribution is sent in at most one round: like a peer that trains between
        # rounds, bring a slightly different vector each time (the change is not timed).
        nonlocal fresh
        step = 0
        while True:
            step += 1
            await engine.set_contribution(vector + np.float32(step * 1e-6), 1, b"b" * 32)
            await fresh.wait()
            fresh = trio.Event()

    engine = RoundEngine(host, node, on_action, bulk_port=0 if args.transport == "bulk" else None)
    stop = trio.Event()

    async def sink(key: bytes, stream: object) -> None:
        while await host.receive_frame(key, stream, 2 << 20) is not None:
            pass
        await host.send_frame(key, stream, b"ok")
        await stream.close()  # type: ignore[attr-defined]

    async def on_stop(key: bytes, stream: object) -> None:
        stop.set()
        await stream.close()  # type: ignore[attr-defined]

    async def until_ready() -> None:
        # Out of the last round, its next contribution set: a round timed from here is not
        # slowed by the members still finishing the last one or making their next vector
        # (at 100M that is seconds of CPU on a shared core).
        with trio.fail_after(300):
            while engine.view.busy or not engine.view.contribution_fresh:
                await trio.sleep(0.005)

    async def on_ready(key: bytes, stream: object) -> None:
        await until_ready()
        await host.send_frame(key, stream, b"ok")
        await stream.close()  # type: ignore[attr-defined]

    async def everyone_ready(others: list[bytes]) -> None:
        async def ask(key: bytes) -> None:
            stream = await host.open_stream(key, READY_PROTOCOL)
            with trio.fail_after(300):
                await host.receive_frame(key, stream, 16)
            await stream.close()  # type: ignore[attr-defined]

        async with trio.open_nursery() as asking:
            asking.start_soon(until_ready)
            for key in others:
                asking.start_soon(ask, key)

    host.handle(ROUND_PROTOCOL, engine.handle_stream)
    host.handle(SINK_PROTOCOL, sink)
    host.handle(STOP_PROTOCOL, on_stop)
    host.handle(READY_PROTOCOL, on_ready)
    async with host.run(), trio.open_nursery() as nursery:
        if args.child == 1:
            await nursery.start(_tcp_sink, int(args.tcp_port))
        for key, port in zip(keys, ports, strict=True):
            if key != me.public_key:  # members send parts to each other, not only to peer 0
                host.remember_addrs(key, [_address(key, port)])
        nursery.start_soon(engine.run)
        nursery.start_soon(keep_contributing)
        if args.child != 0:
            await stop.wait()
            nursery.cancel_scope.cancel()
            return
        others = keys[1:]
        for key, port in zip(others, ports[1:], strict=True):
            await _connect_with_retry(host, key, port)
        stream_mb_s = await _stream_mb_s(host, others[0])
        tcp_mb_s = await _tcp_mb_s(int(args.tcp_port))
        times, sent, cpu = [], [], []
        for _attempt in range(args.rounds + 1 + 20):  # one warm-up; retries if a peer was busy
            await everyone_ready(others)
            round_over = trio.Event()
            began = time.perf_counter()
            began_cpu = time.process_time()
            await engine.start_round(others)
            with trio.fail_after(600):
                await round_over.wait()
            result = outcome["last"]
            if isinstance(result, RoundFinished):
                times.append(time.perf_counter() - began)
                cpu.append(time.process_time() - began_cpu)
                sent.append(result.stats.bytes_sent)
                if len(times) == args.rounds + 1:
                    break
        for key in others:
            with trio.move_on_after(5):
                stream = await host.open_stream(key, STOP_PROTOCOL)
                await stream.close()  # type: ignore[attr-defined]
        timed = times[1:] or times
        print(
            json.dumps(
                {
                    "round_s": statistics.median(timed),
                    "round_times_s": [round(t, 4) for t in timed],
                    "bytes_sent": sent[-1],
                    "stream_mb_s": stream_mb_s,
                    "tcp_mb_s": tcp_mb_s,
                    "cpu_s": statistics.median(cpu[1:] or cpu),
                    "rounds": len(timed),
                    "bulk_frames_sent": engine.bulk_frames_sent,
                    "bulk_fallbacks": engine.bulk_fallbacks,
                }
            ),
            flush=True,
        )
        nursery.cancel_scope.cancel()


def _address(key: bytes, port: str) -> str:
    from gossiplearn.crypto.identity import peer_id_from_public_key

    return f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id_from_public_key(key)}"


async def _connect_with_retry(host: Host, key: bytes, port: str) -> None:
    address = _address(key, port)
    with trio.fail_after(60):
        while True:
            try:
                await host.connect(address)
                return
            except Exception:
                await trio.sleep(0.2)


async def _tcp_sink(
    port: int,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,  # type: ignore[name-defined]
) -> None:
    """Raw loopback TCP, no encryption: read everything, answer one byte at EOF."""
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    task_status.started()

    async def serve(stream: trio.SocketStream) -> None:
        buffer = bytearray(1 << 20)
        while await stream.socket.recv_into(buffer):
            pass
        await stream.send_all(b"k")
        await stream.aclose()

    await trio.serve_listeners(serve, listeners)


async def _tcp_mb_s(port: int) -> float:
    """One raw TCP connection between two of the peer processes: 64 MiB in 1 MiB writes."""
    chunk = os.urandom(1 << 20)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    began = time.perf_counter()
    for _ in range(STREAM_MIB):
        await stream.send_all(chunk)
    await stream.send_eof()
    await stream.receive_some(1)
    elapsed = time.perf_counter() - began
    await stream.aclose()
    return STREAM_MIB * (1 << 20) / 1e6 / elapsed


async def _stream_mb_s(host: Host, key: bytes) -> float:
    chunk = os.urandom(1 << 20)
    stream = await host.open_stream(key, SINK_PROTOCOL)
    began = time.perf_counter()
    for _ in range(STREAM_MIB):
        await host.send_frame(key, stream, chunk)
    await stream.close_write()  # type: ignore[attr-defined]
    await host.receive_frame(key, stream, 16)
    return STREAM_MIB * (1 << 20) / 1e6 / (time.perf_counter() - began)


def _child_main() -> None:
    """One peer process of :func:`libp2p_rounds`."""
    parser = argparse.ArgumentParser(description="a peer process of the libp2p round bench")
    parser.add_argument("--child", type=int, required=True)
    parser.add_argument("--seeds", required=True)
    parser.add_argument("--ports", required=True)
    parser.add_argument("--variant", choices=["secure", "plain"], required=True)
    parser.add_argument("--vector", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--transport", choices=["bulk", "libp2p"], default="bulk")
    parser.add_argument("--tcp-port", required=True)
    parser.add_argument("--ring", type=int, choices=(32, 16, 8), default=32)
    trio.run(libp2p_child, parser.parse_args())


if __name__ == "__main__":
    _child_main()
