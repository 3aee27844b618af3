"""free_port: below the ephemeral range, never twice from one process, GOSSIPLEARN_PORTS."""

import socket

import pytest

from gossiplearn.peer.net import ports
from gossiplearn.peer.net.ports import PORTS_VARIABLE, free_port, port_range


@pytest.fixture(autouse=True)
def fresh_cursor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "_cursor", None)


def test_the_default_range_ends_below_the_kernels_ephemeral_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(PORTS_VARIABLE, raising=False)
    with open("/proc/sys/net/ipv4/ip_local_port_range") as file:
        ephemeral_low = int(file.read().split()[0])
    low, high = port_range()
    assert high == ephemeral_low - 1 and high - low + 1 == 12_000


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_a_range_of_ones_own_is_walked_without_repeats_and_skips_taken_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        taken.listen()
        # A range of 4 around a port in use: every other free port of it comes out once,
        # then the walk starts again in the same order.
        monkeypatch.setenv(PORTS_VARIABLE, f"{port - 1}-{port + 2}")
        free = {p for p in (port - 1, port + 1, port + 2) if _bindable(p)}
        given = [free_port() for _ in range(2 * len(free))]
    assert free and port not in given
    assert sorted(given[: len(free)]) == sorted(free)
    assert given[len(free) :] == given[: len(free)]


def test_a_range_with_no_free_port_is_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv(PORTS_VARIABLE, f"{port}-{port}")
        with pytest.raises(OSError, match=rf"no free TCP port in {port}-{port} on 127\.0\.0\.1"):
            free_port()


@pytest.mark.parametrize("spec", ["abc", "30000", "2000-1000", "80-90", "60000-70000"])
def test_a_bad_range_names_the_variable(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    monkeypatch.setenv(PORTS_VARIABLE, spec)
    with pytest.raises(ValueError, match=rf"^GOSSIPLEARN_PORTS='{spec}' is not a port range"):
        port_range()


def test_the_suites_workers_have_ranges_of_their_own() -> None:
    # tests/conftest.py gives each pytest-xdist worker its slice of the default range, so
    # two workers never choose the same port; a serial run keeps the default.
    import os

    from tests.conftest import DEFAULT_PORTS, worker_ports

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        assert worker_ports(None, 1) is None
        return
    count = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    assert os.environ[PORTS_VARIABLE] == worker_ports(worker, count)
    slices = [worker_ports(f"gw{i}", count) for i in range(count)]
    bounds = [tuple(map(int, s.split("-"))) for s in slices if s]
    assert bounds[0][0] == DEFAULT_PORTS[0] and bounds[-1][1] == DEFAULT_PORTS[1]
    assert all(a[1] + 1 == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
