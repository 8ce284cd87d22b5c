"""Property-based ("fuzz") tests: the hypothesis profiles and how many examples each test runs.

    pytest -m fuzz                              the CI profile: derandomized (a fixed seed, the
                                                same examples every run), 8-200 examples per
                                                test (~20 s of CPU for the format readers,
                                                ~10 s for shards, params, images, weights)
    make fuzz   (HYPOTHESIS_PROFILE=fuzz)       a longer search: `FUZZ_SCALE` (env, default
                                                25) times as many examples, a fresh random
                                                seed each run

A failing example is printed with the `@reproduce_failure` blob that replays it. A test says
how many examples it is worth in CI (`fuzz_settings(40)`); the profile scales them.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
FUZZ_SCALE = int(os.environ.get("FUZZ_SCALE", "25"))  # `make fuzz`: times the CI examples

_COMMON = {
    "deadline": None,  # 2 cores shared with other jobs: timing says nothing about a reader
    "database": None,  # nothing written into the checkout
    "print_blob": True,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
}
settings.register_profile("ci", derandomize=True, **_COMMON)
settings.register_profile("fuzz", derandomize=False, **_COMMON)
settings.load_profile(PROFILE)

fuzz = pytest.mark.fuzz


def fuzz_settings(examples: int) -> settings:
    """`examples` in CI; `FUZZ_SCALE` times as many under `make fuzz`."""
    return settings(max_examples=examples * (FUZZ_SCALE if PROFILE == "fuzz" else 1))
