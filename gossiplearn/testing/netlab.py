"""A network lab: peers in Linux network namespaces, with the round trip times, bandwidth, loss
and firewalls of the internet between them, for tests and benchmarks (needs root).

Topology::

    peer 0 ns            router ns                                   peer 1 ns
    eth0 10.77.1.2 ==veth== p0 10.77.1.1 -> [ip rule] -> tun "wan" -> p1 10.77.2.1 ==veth== eth0 10.77.2.2
      tbf (uplink)          tbf (downlink)      |                      tbf (downlink)       tbf (uplink)
                                       user-space forwarder:
                                       delay, loss, firewall (and DNS)

Each peer has a namespace of its own (``NetLab.namespace(i)``) with one veth to a router
namespace, its own address (``NetLab.ip(i)``, 10.77.(i+1).2) and its own loopback (so every
daemon can use the same status port). Bandwidth is the kernel's: a ``tc tbf`` on both ends of
the peer's veth shapes its uplink and its downlink (an organization's access link). Its
buffer holds one bandwidth-delay product (at least 64 KiB), the classic router sizing; its
burst is at least 96 KiB so that the kernel's TSO super-packets pass whole at high rates.

Latency, loss and firewalls are a small user-space forwarder (:func:`forward`, a process of
its own in the router namespace). Why not the alternatives: this kernel has tbf and htb but no
netem qdisc (``tc qdisc ... netem`` answers "Specified qdisc kind is unknown"), no tc actions
(``action drop`` cannot load) and no nft/iptables binary, so neither a qdisc nor a filter can
hold or drop packets. A TCP proxy per (source, destination) port pair would only see the
connections it is told about, while libp2p peers, the bulk channel and relays dial whatever
addresses they learn; the forwarder sees every IP packet between peers instead. The router
sends every packet that arrives on a peer's veth into a TUN device (policy routing: ``ip rule
iif pN lookup 100``, table 100's default route is the TUN); the forwarder reads it, holds it
for the path's one-way delay (the two peers' access delays added), drops it with the path's
loss probability (seeded: a run replays the same draws for the same packets), drops TCP
connection attempts (SYN without ACK) to a peer whose link accepts no inbound connections (a
stateful firewall, or a NAT without port forwarding: it can dial out, nobody can dial in), and
writes it back into the TUN, from where the kernel routes it to the destination's veth. Packets
of one path keep their order (one FIFO per delay value; there is no jitter). The forwarder
reads the kernel's TSO/GSO super-packets whole (``IFF_VNET_HDR`` with offloads) when no link
loses packets, so it forwards ~64 KiB per system call at gigabit rates; with loss on, it asks
for single packets, so that each segment is lost on its own, which a Python loop forwards at
tens of thousands of packets a second (enough for a few peers at tens of Mbit/s). Its own
scheduling adds well under a millisecond to each delay; :mod:`tests.testing.test_netlab`
measures round trip time, bandwidth, loss, the firewall and DNS of a real lab.

Names: the forwarder also answers DNS (A records) in the router namespace, and each peer's
``/etc/netns/NS/resolv.conf`` names it, so ``/dns4/NAME/...`` multiaddrs resolve in the lab
(libp2p resolves them with dnspython, which reads resolv.conf, not /etc/hosts).

Cleanup: every run has a unique prefix (``gl-PID-RANDOM``); :class:`NetLab` is a context
manager that, whatever happens, stops the processes it started, deletes its namespaces (their
veths and the TUN go with them) and their /etc/netns directories. A lab left behind by a
crashed run (its creator's PID is gone) is removed by the next one (:func:`sweep_stale`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: Every lab's namespaces are named PREFIX-<creator pid>-<random>-<role>.
NAME_PREFIX = "gl"
SUBNET = "10.77"
TUN_NAME = "wan"
ROUTE_TABLE = 100
NETNS_DIR = Path("/var/run/netns")
ETC_NETNS = Path("/etc/netns")
#: The smallest tbf burst: above a full TSO super-packet (64 KiB + headers), so that the
#: kernel does not cut them into single packets at rates where the forwarder needs them whole.
MIN_BURST_BYTES = 96 * 1024
MIN_QUEUE_BYTES = 64 * 1024
READY_TIMEOUT_S = 10.0
STOP_GRACE_S = 5.0

_CLONE_NEWNET = 0x40000000
_TUNSETIFF = 0x400454CA
_TUNSETOFFLOAD = 0x400454D0
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000
_TUN_F_CSUM, _TUN_F_TSO4, _TUN_F_TSO6 = 0x01, 0x02, 0x04
_VNET_HDR_BYTES = 10  # struct virtio_net_hdr
_MAX_PACKET = 65536 + _VNET_HDR_BYTES + 256


class LabUnavailable(RuntimeError):
    """Namespaces cannot be made here (not root, no ``ip``, no TUN device, ...)."""


@dataclass(frozen=True)
class Link:
    """One peer's access link to the internet.

    ``mbit``: its bandwidth in each direction (None: unshaped, veth speed); ``delay_ms``: the
    one-way delay between it and the internet's core (a path's delay is both ends' added);
    ``loss``: the probability that a packet crossing it is lost, in each direction;
    ``inbound``: False for a peer behind a firewall or NAT that only dials out.
    """

    mbit: float | None = None
    delay_ms: float = 0.0
    loss: float = 0.0
    inbound: bool = True

    def __post_init__(self) -> None:
        if self.mbit is not None and not self.mbit > 0:
            raise ValueError("mbit must be > 0 (or None: unshaped)")
        if not self.delay_ms >= 0 or not 0 <= self.loss < 1:
            raise ValueError("need delay_ms >= 0 and 0 <= loss < 1")


def uniform(
    peers: int, rtt_ms: float = 0.0, mbit: float | None = None, loss: float = 0.0
) -> list[Link]:
    """Links for ``peers`` peers such that every path has this round trip time (both ways:
    4 access delays of rtt_ms / 4) and loses ``loss`` of its packets in each direction."""
    per_link = 1 - math.sqrt(1 - loss)  # two links per path: 1 - (1 - l)^2 = loss
    return [Link(mbit, rtt_ms / 4, per_link) for _ in range(peers)]


def path_delay_ms(links: Sequence[Link], src: int, dst: int) -> float:
    return links[src].delay_ms + links[dst].delay_ms


def path_loss(links: Sequence[Link], src: int, dst: int) -> float:
    return 1 - (1 - links[src].loss) * (1 - links[dst].loss)


# ---- the lab ---------------------------------------------------------------------------------


def _run(
    *argv: str, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=30)
    if check and result.returncode != 0:
        raise LabUnavailable(
            f"`{' '.join(argv)}` failed (exit {result.returncode}): {result.stderr.strip()}"
        )
    return result


def _ip(namespace: str, command: str) -> None:
    _run("ip", "-n", namespace, *command.split())


def unavailable_reason() -> str | None:
    """Why a lab cannot be made here, in one line, or None."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (run the tests as root)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (the latency forwarder needs TUN devices)"
    probe = f"{NAME_PREFIX}-{os.getpid()}-probe{random.randrange(1 << 16):04x}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip() or made.returncode}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def default_congestion() -> str:
    """The TCP congestion control a new namespace starts with (the host's default)."""
    return Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespace_pids(namespace: str) -> list[int]:
    result = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    return [int(p) for p in result.stdout.split() if p.isdigit()]


def _delete_namespace(namespace: str) -> None:
    for pid in _namespace_pids(namespace):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
    shutil.rmtree(ETC_NETNS / namespace, ignore_errors=True)


def sweep_stale() -> list[str]:
    """Delete the namespaces of labs whose creating process is gone (a crashed run); returns
    their names. Labs of live processes, and anything not named like a lab, are left alone."""
    pattern = re.compile(rf"^{NAME_PREFIX}-(\d+)-[0-9a-z]+-")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    removed = []
    for line in listed.splitlines():
        name = line.split()[0] if line.split() else ""
        match = pattern.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _delete_namespace(name)
            removed.append(name)
    return removed


class NetLab:
    """Peers in namespaces with the given links between them (see the module docstring).

    ``names``: DNS names (``org-b.lab``) -> peer index, answered in the lab;
    ``congestion``: the TCP congestion control of every peer namespace (None: the kernel's
    default, :func:`default_congestion`; outside the initial namespace Linux allows only those
    in ``net.ipv4.tcp_allowed_congestion_control``); ``seed``: the loss draws.

    ``with NetLab(links) as lab:`` sets it up and always tears it down.
    """

    def __init__(
        self,
        links: Sequence[Link],
        *,
        names: Mapping[str, int] | None = None,
        congestion: str | None = None,
        seed: int = 0,
    ) -> None:
        if not 1 <= len(links) <= 250:
            raise ValueError("a lab has 1..250 peers")
        self.links = list(links)
        self.names = dict(names or {})
        for name, index in self.names.items():
            if not 0 <= index < len(self.links):
                raise ValueError(f"name {name!r} points to no peer ({index})")
        self.congestion = congestion
        self.seed = seed
        self.prefix = f"{NAME_PREFIX}-{os.getpid()}-{random.randrange(36**5):05x}"
        self.router = f"{self.prefix}-r"
        self._namespaces: list[str] = []
        self._processes: list[subprocess.Popen[Any]] = []
        self._forwarder: subprocess.Popen[str] | None = None
        self._workdir: Path | None = None

    # ---- addresses ----

    def namespace(self, i: int) -> str:
        return f"{self.prefix}-p{i}"

    def ip(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}.2"

    def gateway(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}.1"

    @property
    def needs_forwarder(self) -> bool:
        return bool(self.names) or any(
            link.delay_ms > 0 or link.loss > 0 or not link.inbound for link in self.links
        )

    # ---- lifecycle ----

    def __enter__(self) -> NetLab:
        reason = unavailable_reason()
        if reason is not None:
            raise LabUnavailable(reason)
        sweep_stale()
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_namespace(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self._namespaces.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def _sysctl(self, namespace: str, settings: Mapping[str, str]) -> None:
        script = "".join(
            f"echo {value} > /proc/sys/{key.replace('.', '/')}\n" for key, value in settings.items()
        )
        _run("ip", "netns", "exec", namespace, "sh", "-e", "-c", script)

    def _create(self) -> None:
        self._workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        router = self.router
        self._add_namespace(router)
        self._sysctl(
            router,
            {
                "net.ipv4.ip_forward": "1",
                "net.ipv4.conf.all.rp_filter": "0",
                "net.ipv4.conf.default.rp_filter": "0",
                "net.ipv6.conf.all.disable_ipv6": "1",
            },
        )
        forwarding = self.needs_forwarder
        if forwarding:
            _ip(router, f"tuntap add dev {TUN_NAME} mode tun vnet_hdr")
            _ip(router, f"link set {TUN_NAME} txqueuelen 10000 up")
            _ip(router, f"route add default dev {TUN_NAME} table {ROUTE_TABLE}")
        peer_settings = {"net.ipv6.conf.all.disable_ipv6": "1"}
        if self.congestion:
            allowed = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control").read_text()
            if self.congestion not in allowed.split():
                raise LabUnavailable(
                    f"congestion control {self.congestion!r} is not allowed outside the "
                    f"initial namespace (allowed: {allowed.strip()}); pick one of those or add "
                    "it to net.ipv4.tcp_allowed_congestion_control"
                )
            peer_settings["net.ipv4.tcp_congestion_control"] = self.congestion
        farthest_s = max(link.delay_ms for link in self.links) / 1000
        for i, link in enumerate(self.links):
            ns, side = self.namespace(i), f"p{i}"  # its veth: eth0 there, pN in the router
            self._add_namespace(ns)
            _ip(ns, f"link add eth0 type veth peer name {side} netns {router}")
            _ip(ns, f"addr add {self.ip(i)}/24 dev eth0")
            _ip(ns, "link set eth0 up")
            _ip(ns, f"route add default via {self.gateway(i)}")
            _ip(router, f"addr add {self.gateway(i)}/24 dev {side}")
            _ip(router, f"link set {side} up")
            self._sysctl(ns, peer_settings)
            self._sysctl(router, {f"net.ipv4.conf.{side}.rp_filter": "0"})
            if link.mbit is not None:
                rtt_s = 2 * (link.delay_ms / 1000 + farthest_s)  # its longest path's
                self._shape(ns, "eth0", link.mbit, rtt_s)  # uplink
                self._shape(router, side, link.mbit, rtt_s)  # downlink
            if forwarding:
                _ip(router, f"rule add iif {side} table {ROUTE_TABLE} priority 100")
            folder = ETC_NETNS / ns
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "resolv.conf").write_text(
                f"nameserver {self.gateway(i)}\noptions timeout:2 attempts:2\n"
            )
            hosts = "".join(f"{self.ip(j)} {n}\n" for n, j in self.names.items())
            (folder / "hosts").write_text(f"127.0.0.1 localhost\n{hosts}")
        if forwarding:
            self._sysctl(router, {f"net.ipv4.conf.{TUN_NAME}.rp_filter": "0"})
            self._start_forwarder()

    def _shape(self, namespace: str, device: str, mbit: float, rtt_s: float) -> None:
        rate_bytes = mbit * 1e6 / 8
        burst = max(MIN_BURST_BYTES, int(rate_bytes * 0.005))
        queue = max(MIN_QUEUE_BYTES, int(rate_bytes * max(rtt_s, 0.02)))
        _run(
            *f"tc -n {namespace} qdisc add dev {device} root tbf rate {int(mbit * 1e6)}bit "
            f"burst {burst} limit {queue + burst}".split()
        )

    def _forwarder_spec(self) -> dict[str, Any]:
        n = len(self.links)
        return {
            "tun": TUN_NAME,
            "subnet": SUBNET,
            "seed": self.seed,
            "offload": all(link.loss == 0 for link in self.links),
            "delay_ms": [[path_delay_ms(self.links, s, d) for d in range(n)] for s in range(n)],
            "loss": [[path_loss(self.links, s, d) for d in range(n)] for s in range(n)],
            "inbound": [link.inbound for link in self.links],
            "names": {name.lower().rstrip("."): self.ip(i) for name, i in self.names.items()},
            "stats": str(self._stats_path),
        }

    @property
    def _stats_path(self) -> Path:
        assert self._workdir is not None
        return self._workdir / "forwarder-stats.json"

    def _start_forwarder(self) -> None:
        assert self._workdir is not None
        spec_path = self._workdir / "forwarder.json"
        spec_path.write_text(json.dumps(self._forwarder_spec()))
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.router, sys.executable, "-m", __name__, "forward"]
            + [str(spec_path)],
            stdout=subprocess.PIPE,
            stderr=open(self._workdir / "forwarder.log", "w"),  # noqa: SIM115 - the child's
            text=True,
            start_new_session=True,
        )
        self._forwarder = process
        self._processes.append(process)
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], READY_TIMEOUT_S)
        line = process.stdout.readline() if ready else ""
        if line.strip() != "ready":
            log = (self._workdir / "forwarder.log").read_text()[-2000:]
            raise LabUnavailable(f"the lab's forwarder did not start: {line.strip()!r} {log}")

    def close(self) -> None:
        """Stop every process started here, delete the namespaces; never raises."""
        for process in self._processes:
            with contextlib.suppress(Exception):
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in self._processes:
            with contextlib.suppress(Exception):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(Exception):
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=5)
        self._processes.clear()
        for namespace in reversed(self._namespaces):
            _delete_namespace(namespace)
        self._namespaces.clear()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # ---- running things in a peer's namespace ----

    def command(self, i: int, argv: Sequence[str]) -> list[str]:
        """``argv`` run in peer ``i``'s namespace (and with its resolv.conf)."""
        return ["ip", "netns", "exec", self.namespace(i), *argv]

    def popen(self, i: int, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in peer ``i``'s namespace, in a session of its own; the lab stops it
        (SIGTERM, then SIGKILL) when it closes, if it is still running."""
        kwargs.setdefault("start_new_session", True)
        process = subprocess.Popen(self.command(i, argv), **kwargs)
        self._processes.append(process)
        return process

    def run(
        self, i: int, argv: Sequence[str], timeout_s: float = 60.0, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(i, argv), timeout=timeout_s, **kwargs)

    def call(self, i: int, fn: Callable[[], T], timeout_s: float = 30.0) -> T:
        """``fn()`` in a thread of this process switched into peer ``i``'s network namespace:
        sockets it opens belong to that namespace (e.g. to read a daemon's status port there).
        The thread ends with ``fn``, so nothing else of this process changes namespace."""
        return call_in_namespace(self.namespace(i), fn, timeout_s)

    def forwarder_stats(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """The forwarder's counters: ``paths``, per path ``"src>dst": [packets, bytes, lost,
        refused]`` (refused: connection attempts the firewall dropped), and ``dns``, the A
        queries answered per name."""
        forwarder = self._forwarder
        if forwarder is None:
            return {"paths": {}}
        before = self._stats_path.stat().st_mtime_ns if self._stats_path.exists() else 0
        forwarder.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._stats_path.exists() and self._stats_path.stat().st_mtime_ns != before:
                with contextlib.suppress(ValueError):
                    return dict(json.loads(self._stats_path.read_text()))
            time.sleep(0.02)
        raise TimeoutError("the forwarder wrote no statistics")

    def describe(self) -> list[dict[str, Any]]:
        return [{"ip": self.ip(i), **asdict(link)} for i, link in enumerate(self.links)]


def call_in_namespace(namespace: str, fn: Callable[[], T], timeout_s: float = 30.0) -> T:
    """``fn()`` in a new thread that first joins ``namespace`` (setns, this thread only)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    box: list[Any] = []

    def target() -> None:
        try:
            with open(NETNS_DIR / namespace) as handle:
                if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"setns({namespace}): {os.strerror(code)}")
            box.append((True, fn()))
        except BaseException as exc:
            box.append((False, exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not box:
        raise TimeoutError(f"call in namespace {namespace} took over {timeout_s} s")
    ok, value = box[0]
    if not ok:
        raise value
    return value


# ---- the forwarder (a process of its own in the router namespace) --------------------------


def _open_tun(name: str, offload: bool) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    request = struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI | _IFF_VNET_HDR)
    fcntl.ioctl(fd, _TUNSETIFF, request)
    flags = _TUN_F_CSUM | _TUN_F_TSO4 | _TUN_F_TSO6 if offload else 0
    fcntl.ioctl(fd, _TUNSETOFFLOAD, flags)
    return fd


class _Dns:
    """A/AAAA answers for the lab's names (dnspython parses and builds the messages)."""

    def __init__(self, names: Mapping[str, str]) -> None:
        import dns.message
        import dns.rcode
        import dns.rdatatype
        import dns.rrset

        self._dns = dns
        self.names = dict(names)
        self.queries: dict[str, int] = {}  # name -> A queries answered
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", 53))
        self.sock.setblocking(False)

    def serve_one(self) -> None:
        dns = self._dns
        try:
            data, address = self.sock.recvfrom(4096)
        except BlockingIOError:
            return
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return
        reply = dns.message.make_response(query)
        question = query.question[0] if query.question else None
        if question is not None:
            name = question.name.to_text().lower().rstrip(".")
            ip = self.names.get(name)
            if ip is None:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdtype == dns.rdatatype.A:
                reply.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", ip))
                self.queries[name] = self.queries.get(name, 0) + 1
        with contextlib.suppress(OSError):
            self.sock.sendto(reply.to_wire(), address)


def forward(spec: Mapping[str, Any]) -> None:
    """The forwarder's loop (see the module docstring): runs until SIGTERM; SIGUSR1 writes its
    counters to ``spec["stats"]``."""
    with contextlib.suppress(OSError):
        os.nice(-10)  # its delays are the lab's: keep it ahead of the daemons it serves
    subnet = bytes(int(x) for x in spec["subnet"].split("."))
    delays = [[d / 1000 for d in row] for row in spec["delay_ms"]]
    losses = spec["loss"]
    inbound = spec["inbound"]
    peers = len(inbound)
    rng = random.Random(spec["seed"])
    fd = _open_tun(spec["tun"], bool(spec["offload"]))
    dns = _Dns(spec["names"]) if spec["names"] else None
    queues: dict[float, deque[tuple[float, bytes]]] = {}
    counts: dict[tuple[int, int], list[int]] = {}
    stop = False
    dump = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    def on_usr1(signum: int, frame: object) -> None:
        nonlocal dump
        dump = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGUSR1, on_usr1)
    # A signal must end a poll() that would wait forever (Python retries an interrupted one).
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.register(wake_read, select.POLLIN)
    if dns is not None:
        poller.register(dns.sock.fileno(), select.POLLIN)
    print("ready", flush=True)
    hdr = _VNET_HDR_BYTES
    while not stop:
        now = time.monotonic()
        due = min((q[0][0] for q in queues.values() if q), default=None)
        # poll() counts whole milliseconds: wait the whole ones there, the rest in a precise
        # sleep, so that a delay is kept to well under a millisecond.
        timeout_ms = None if due is None else max(0, math.floor((due - now) * 1000))
        try:
            events = poller.poll(timeout_ms)
        except InterruptedError:
            events = []
        if not events and due is not None:
            left = due - time.monotonic()
            if left > 0:
                time.sleep(left)
        for ready_fd, _ in events:
            if dns is not None and ready_fd == dns.sock.fileno():
                dns.serve_one()
            elif ready_fd == wake_read:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_read, 512)
        for _ in range(256):  # a batch of packets per wake
            try:
                packet = os.read(fd, _MAX_PACKET)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            ip = memoryview(packet)[hdr:]
            if len(ip) < 20 or ip[0] >> 4 != 4 or bytes(ip[12:14]) != subnet[:2]:
                continue
            src, dst = ip[14] - 1, ip[18] - 1
            if not (0 <= src < peers and 0 <= dst < peers):
                continue
            count = counts.get((src, dst))
            if count is None:
                count = counts[(src, dst)] = [0, 0, 0, 0]
            count[0] += 1
            count[1] += len(ip)
            if not inbound[dst] and ip[9] == 6:
                ihl = (ip[0] & 0x0F) * 4
                if len(ip) > ihl + 13 and ip[ihl + 13] & 0x12 == 0x02:  # SYN without ACK
                    count[3] += 1
                    continue
            loss = losses[src][dst]
            if loss and rng.random() < loss:
                count[2] += 1
                continue
            delay = delays[src][dst]
            if delay <= 0:
                _write_packet(fd, packet)
                continue
            queue = queues.get(delay)
            if queue is None:
                queue = queues[delay] = deque()
            queue.append((time.monotonic() + delay, packet))
        now = time.monotonic()
        for queue in queues.values():
            while queue and queue[0][0] <= now:
                _write_packet(fd, queue.popleft()[1])
        if dump:
            dump = False
            _write_stats(spec["stats"], counts, dns)
    _write_stats(spec["stats"], counts, dns)


def _write_packet(fd: int, packet: bytes) -> None:
    # A full TUN queue drops the packet, as a full router queue would.
    with contextlib.suppress(BlockingIOError, OSError):
        os.write(fd, packet)


def _write_stats(path: str, counts: Mapping[tuple[int, int], list[int]], dns: _Dns | None) -> None:
    stats = {
        "paths": {f"{s}>{d}": c for (s, d), c in counts.items()},
        "dns": {} if dns is None else dict(dns.queries),
    }
    temp = f"{path}.tmp"
    with open(temp, "w") as handle:
        json.dump(stats, handle)
    os.replace(temp, path)


@contextlib.contextmanager
def lab(links: Sequence[Link], **options: Any) -> Iterator[NetLab]:
    """``with lab(links) as net:``: a :class:`NetLab`, always torn down."""
    with NetLab(links, **options) as net:
        yield net


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 2 and args[0] == "forward":
        forward(json.loads(Path(args[1]).read_text()))
        return 0
    print("usage: python -m gossiplearn.testing.netlab forward SPEC.json", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
