"""Fixtures of the email plugin's tests."""

from __future__ import annotations

import pathlib

import pytest
from smtp_servers import Certificate, make_certificate


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1, made once per session."""
    directory: pathlib.Path = tmp_path_factory.mktemp("tls")
    return make_certificate(directory)
