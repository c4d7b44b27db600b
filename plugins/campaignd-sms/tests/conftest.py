"""Fixtures of the sms plugin's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sms_pool import renderer
from smsc import Smsc, running_smsc


@pytest.fixture
def smsc() -> Iterator[Smsc]:
    """A scriptable SMSC on a free port of 127.0.0.1 that accepts every submit with a DELIVRD
    receipt until the test scripts it otherwise."""
    with running_smsc() as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def _render_workers() -> Iterator[None]:
    """Stop the render pool's worker processes once the tests are done."""
    yield
    if renderer.cache_info().currsize:
        renderer().close()
