"""Shared settings for the property-based bad-input tests.

``make test`` runs each at 10,000 examples; ``make fuzz`` raises the count through
OPMOB_FUZZ_EXAMPLES and runs only the tests marked ``fuzz``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, settings

EXAMPLES = max(10_000, int(os.environ.get("OPMOB_FUZZ_EXAMPLES", "10000")))

F = TypeVar("F", bound=Callable[..., object])


def fuzz(fn: F) -> F:
    marked: F = pytest.mark.fuzz(
        settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])(fn)
    )
    return marked
