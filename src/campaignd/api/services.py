"""Which services the daemon serves."""

from __future__ import annotations

from collections.abc import Callable

from campaignd.api.server import ApiServer
from campaignd.config import Settings
from campaignd.store.db import Database


def register_services(api: ApiServer, database: Database, settings: Callable[[], Settings]) -> None:
    """Add every campaignd service to the server."""
