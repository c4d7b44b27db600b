"""GetCampaign's answers, kept while the campaign they show is unchanged."""

from __future__ import annotations

from campaignd.api import convert
from campaignd.campaigns import CampaignManager
from campaignd.store.campaigns import Stamp
from campaignd.v1 import resources_pb2 as pb


class CampaignAnswers:
    """The Campaign message of each campaign asked for, kept with the campaign's stamp (its
    version and update time) and answered again while a read of the stamp alone finds it
    unchanged: that read is one indexed row through the driver, where reading the campaign and
    its channels and converting them cost most of a call's time on the API's thread.

    A stamp changes with every write of the campaign or of its channels, whichever daemon makes
    it, so an answer is never older than the read that checked it. Only the API's event loop
    uses it; the messages are shared between calls and must not be changed."""

    def __init__(self, manager: CampaignManager, size: int = 1024) -> None:
        self.manager = manager
        self.size = size
        self._kept: dict[str, tuple[Stamp, pb.Campaign]] = {}

    async def campaign(self, campaign_id: str) -> pb.Campaign:
        """The campaign's Campaign message as stored now; NOT_FOUND."""
        kept = self._kept.get(campaign_id)
        try:
            stamp, record = await self.manager.get_if_changed(
                campaign_id, kept[0] if kept is not None else None
            )
        except Exception:
            self._kept.pop(campaign_id, None)
            raise
        if record is None:
            assert kept is not None  # unchanged, so it was known
            return kept[1]
        message = convert.campaign_message(record)
        if campaign_id not in self._kept and len(self._kept) >= self.size:
            # The oldest entry goes: dicts keep their order of insertion.
            del self._kept[next(iter(self._kept))]
        self._kept[campaign_id] = (stamp, message)
        return message
