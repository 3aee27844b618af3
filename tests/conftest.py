"""Shared test configuration: Hypothesis profiles.

CI runs the "ci" profile (no deadline: a loaded 2-core CI machine must not turn slowness into
flaky failures). Set HYPOTHESIS_PROFILE=dev for a quicker local run.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile(
    "dev", deadline=None, max_examples=50, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
