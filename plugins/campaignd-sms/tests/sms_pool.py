"""The daemon's render pool for the sms plugin's tests."""

from __future__ import annotations

import functools

from campaignd.rendering.pool import RenderPool

RENDER_TIMEOUT = 0.3  # seconds a render may take in these tests (the daemon's default is 1 s)


@functools.cache
def renderer() -> RenderPool:
    """One worker, renders bounded by RENDER_TIMEOUT and 256 MiB (closed by conftest at the end)."""
    return RenderPool(workers=1, timeout=RENDER_TIMEOUT)
