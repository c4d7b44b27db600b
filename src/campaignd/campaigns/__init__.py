"""Campaign operations independent of gRPC: what the CampaignService servicer and the engine
call. `operations` writes every lifecycle move in one transaction, `launch` holds what every
way into RUNNING shares (the checks for launch, the slots, freezing recipients), `progress`
builds reports and measures the current rate, `previews` renders and test-sends messages."""

from campaignd.campaigns.operations import (
    MAX_CHANNELS,
    SYSTEM,
    Caller,
    CampaignManager,
    Replies,
    Sending,
    Target,
)
from campaignd.campaigns.previews import AddressResult, Previews
from campaignd.campaigns.progress import (
    CampaignReport,
    ChannelReport,
    PartCounts,
    Progress,
    RateMeter,
    Reports,
    Update,
)

__all__ = [
    "MAX_CHANNELS",
    "SYSTEM",
    "AddressResult",
    "Caller",
    "CampaignManager",
    "CampaignReport",
    "ChannelReport",
    "PartCounts",
    "Previews",
    "Progress",
    "RateMeter",
    "Replies",
    "Reports",
    "Sending",
    "Target",
    "Update",
]
