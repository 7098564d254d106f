"""Hypothesis settings of the fast tier: nothing in them depends on how fast the machine is
(no deadline, no "too slow" health check), so a loaded machine cannot fail a property test;
each test picks a modest ``max_examples`` so that the tier stays fast."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

__all__ = ["UNTIMED"]

UNTIMED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
