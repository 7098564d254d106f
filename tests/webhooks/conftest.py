"""Fixtures of the webhook tests: a real receiver on 127.0.0.1 (tests/webhooks/receiver.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.webhooks.receiver import Receiver, RunningReceiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with RunningReceiver() as running:
        yield running
