"""What the engine asks of the cluster it is part of, and the answers of a daemon alone."""

from __future__ import annotations

from typing import Protocol


class EngineRole(Protocol):
    """This daemon's part in sending: whether it leads, whether it may send, its share of rates."""

    # True in a cluster: marks, lease renewals and results are taken only while this daemon's
    # membership lease is live, so a member taken for stopped can change nothing it had leased.
    fencing: bool

    def leads(self) -> bool:
        """Whether this daemon runs schedules, activation and the sweeps now."""
        ...

    def may_send(self) -> bool:
        """Whether a send may start now; False once the membership lease is about to lapse."""
        ...

    def rate_share(self) -> float:
        """The part of a channel's rate this daemon sends at (1: all of it)."""
        ...


class _Alone:
    """A daemon on its own database (SQLite): it leads, always may send, at the whole rate."""

    fencing = False

    def leads(self) -> bool:
        return True

    def may_send(self) -> bool:
        return True

    def rate_share(self) -> float:
        return 1.0


ALONE: EngineRole = _Alone()
