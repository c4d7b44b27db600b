"""Who is calling, and may they: Unix-socket peers are trusted by file mode, TCP peers need a token."""

from __future__ import annotations

import contextvars
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from campaignd.config import Role, TokenSettings

RANK: dict[Role, int] = {"viewer": 0, "operator": 1, "admin": 2}

# Methods that only read; everything not listed here or in ADMIN_METHODS needs `operator`.
VIEWER_METHODS = frozenset(
    {
        "GetCampaign",
        "ListCampaigns",
        "EstimateRecipients",
        "GetCampaignReport",
        "ListMessages",
        "ListCampaignHistory",
        "WatchCampaign",
        "ListChannelTypes",
        "PreviewMessage",
        "ServerReflectionInfo",
        "GetContact",
        "ListContacts",
        "ListLists",
        "GetSegment",
        "ListSegments",
        "ListSuppressions",
        "CheckSuppression",
        "ListClusterMembers",
    }
)
# Deleting campaigns and changing suppressions (which decide who may never be contacted) is admin work.
ADMIN_METHODS = frozenset({"DeleteCampaign", "AddSuppressions", "RemoveSuppression"})
# Load balancers and supervisors probe health without credentials.
OPEN_SERVICES = frozenset({"grpc.health.v1.Health"})


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    name: str
    role: Role


SYSTEM = Principal("system", "admin")
LOCAL = Principal("local", "admin")
# The caller a front process (api/front.py) admitted, named in the calls it forwards.
FORWARDED_FOR = "campaignd-principal-bin"
current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal", default=SYSTEM)


def required_role(full_method: str) -> Role | None:
    """The least role that may call `/package.Service/Method`; None when anyone may."""
    service, _, method = full_method.lstrip("/").partition("/")
    if service in OPEN_SERVICES:
        return None
    if method in VIEWER_METHODS:
        return "viewer"
    if method in ADMIN_METHODS:
        return "admin"
    return "operator"


class Authenticator:
    """Maps a call's peer and metadata to a Principal; the token list can be swapped on reload."""

    def __init__(self, tokens: Sequence[TokenSettings]) -> None:
        self.set_tokens(tokens)

    def set_tokens(self, tokens: Sequence[TokenSettings]) -> None:
        """Replace the accepted tokens (read from their secret sources now)."""
        self._tokens = [
            (t.secret.read().get_secret_value().encode(), Principal(t.name, t.role)) for t in tokens
        ]

    def authenticate(self, peer: str, metadata: Iterable[tuple[str, str | bytes]]) -> Principal | None:
        """The principal, or None when a TCP caller presents no valid token. A Unix-socket caller
        is trusted, and may name the caller it forwards (FORWARDED_FOR)."""
        if peer.startswith("unix:"):
            # The socket's file mode already decided who may connect: a caller that may connect
            # is an admin anyway, so the name it gives raises nothing.
            for key, value in metadata:
                if key == FORWARDED_FOR:
                    name = value.decode(errors="replace") if isinstance(value, bytes) else value
                    return Principal(name, "admin")
            return LOCAL
        presented = b""
        for key, value in metadata:
            if key == "authorization":
                text = value.decode() if isinstance(value, bytes) else value
                scheme, _, token = text.partition(" ")
                if scheme.lower() == "bearer":
                    presented = token.strip().encode()
        if not presented:
            return None
        for secret, principal in self._tokens:
            if hmac.compare_digest(secret, presented):
                return principal
        return None
