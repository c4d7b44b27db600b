"""Fixtures of the email plugin's tests."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest
from smtp_servers import Certificate, make_certificate, renderer


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1, made once per session."""
    directory: pathlib.Path = tmp_path_factory.mktemp("tls")
    return make_certificate(directory)


@pytest.fixture(scope="session", autouse=True)
def _render_workers() -> Iterator[None]:
    """Stop the render pool's worker processes once the tests are done."""
    yield
    if renderer.cache_info().currsize:
        renderer().close()
