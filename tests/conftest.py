"""Shared test configuration: Hypothesis profiles, the order the long scenarios start in, and
each pytest-xdist worker's own ports.

CI runs the "ci" profile (no deadline: a loaded 2-core CI machine must not turn slowness into
flaky failures). Set HYPOTHESIS_PROFILE=dev for a quicker local run.
"""

import os

import pytest
from hypothesis import HealthCheck, settings

from gossiplearn.peer.net.ports import PORTS_VARIABLE, port_range

settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile(
    "dev", deadline=None, max_examples=50, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: The ports the suite's peers take: gossiplearn.peer.net.ports' range (below the kernel's
#: ephemeral ports, or GOSSIPLEARN_PORTS if the caller set it), read before it is split.
DEFAULT_PORTS = port_range()


def worker_ports(worker: str | None, count: int) -> str | None:
    """GOSSIPLEARN_PORTS for pytest-xdist's worker ``worker`` ("gw0"...) of ``count``: its
    own slice of DEFAULT_PORTS, so two workers never choose one port. None: not a worker."""
    if worker is None:
        return None
    index = int(worker.removeprefix("gw"))
    low, high = DEFAULT_PORTS
    size = (high - low + 1) // count
    first = low + index * size
    last = high if index == count - 1 else first + size - 1
    return f"{first}-{last}"


# Set before any test runs: the daemons and sims the tests start inherit it.
_share = worker_ports(
    os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
)
if _share is not None:
    os.environ[PORTS_VARIABLE] = _share


def _module_weight(items: list[pytest.Item]) -> dict[str, int]:
    """Each slow module's longest timeout, a stand-in for how long the module runs."""
    weight: dict[str, int] = {}
    for item in items:
        if item.get_closest_marker("slow") is None:
            continue
        marker = item.get_closest_marker("timeout")
        bound = int(marker.args[0]) if marker and marker.args else 300
        module = item.nodeid.split("::", 1)[0]
        weight[module] = max(weight.get(module, 0), bound)
    return weight


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The long live scenarios start first, longest bound first, so that with `-n 2` (make
    # test) they overlap the many short tests instead of running alone at the end. A module's
    # tests stay together and in order: module fixtures are built once per worker.
    weight = _module_weight(items)
    items.sort(key=lambda item: -weight.get(item.nodeid.split("::", 1)[0], 0))
