"""Shared test configuration: Hypothesis profiles.

CI runs the "ci" profile (no deadline: a loaded 2-core CI machine must not turn slowness into
flaky failures). Set HYPOTHESIS_PROFILE=dev for a quicker local run.
"""

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile(
    "dev", deadline=None, max_examples=50, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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
