"""The settings every member of a cluster must share, and how two members' differ.

Each member writes its own with its heartbeat (`shared`); one that finds another's differing
logs which (`differences`). Transports are compared by what the cluster divides among the
members, type, rate and concurrency, and only where both members have the transport: a member
without one leaves it to the others, and a transport's options may rightly differ per member (a
kannel transport's `callback_port`). Channel types' options are compared by a digest, so that
no option's value is written to the database.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from campaignd.config import Settings


def shared(settings: Settings) -> dict[str, Any]:
    """What of `settings` must match on every member, as JSON-ready values."""
    types = json.dumps(settings.channel_types, sort_keys=True, default=str)
    return {
        "engine.slots": dict(sorted(settings.engine.slots.items())),
        "engine.slot_policy": settings.engine.slot_policy,
        "plugins.load": sorted(settings.plugins.load),
        "channel_types": hashlib.sha256(types.encode()).hexdigest()[:16],
        "transports": {
            name: {"type": t.type, "rate": t.rate, "concurrency": t.concurrency}
            for name, t in sorted(settings.transports.items())
        },
    }


def differences(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[str]:
    """The settings in which another member's (`theirs`) differ from this one's, by name
    (`engine.slots`, `transports.relay`, ...)."""
    found = [
        key
        for key in ("engine.slots", "engine.slot_policy", "plugins.load", "channel_types")
        if key in mine and key in theirs and mine[key] != theirs[key]
    ]
    my_transports, their_transports = mine.get("transports", {}), theirs.get("transports", {})
    found.extend(
        f"transports.{name}"
        for name in sorted(set(my_transports) & set(their_transports))
        if my_transports[name] != their_transports[name]
    )
    return found
