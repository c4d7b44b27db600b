"""The composition root: the parts of one daemon, built once and wired together."""

from __future__ import annotations

from collections.abc import Callable

from campaignd.api.campaigns import CampaignReplies, CampaignService
from campaignd.api.cluster import ClusterService
from campaignd.api.contacts import ContactService
from campaignd.api.convert import PageTokens
from campaignd.api.server import ApiServer
from campaignd.audience.service import ContactManager
from campaignd.campaigns import CampaignManager, Previews, RateMeter, Reports
from campaignd.changes import ChangeHub
from campaignd.clock import Clock
from campaignd.cluster.node import open_node
from campaignd.config import Settings
from campaignd.engine.core import Engine
from campaignd.engine.events import EventRecorder
from campaignd.engine.transports import Transports
from campaignd.plugin.manager import Plugins
from campaignd.rendering.pool import RenderPool
from campaignd.store import keys
from campaignd.store.db import Database


class Components:
    """The parts of one daemon below its listeners, and the servicers they answer through."""

    def __init__(
        self, api: ApiServer, database: Database, settings: Callable[[], Settings], plugins: Plugins
    ) -> None:
        self.plugins = plugins
        templates = settings().templates
        self.renderer = RenderPool(
            workers=templates.workers,
            timeout=templates.timeout,
            memory_limit=templates.memory_limit_mib << 20,
        )
        self.plugins.renderer = self.renderer
        self.hub = ChangeHub()
        # One daemon alone (SQLite), or a member of a cluster on PostgreSQL.
        self.node = open_node(database, settings, self.hub)
        self.campaigns = CampaignManager(
            database, self.plugins, self.hub, lambda: settings().engine, CampaignReplies()
        )
        self.recorder = EventRecorder(database, self.hub)
        self.transports = Transports(
            self.plugins, self.recorder, lambda: settings().engine.transport_rest, Clock(), self.node.share
        )
        self.engine = (
            Engine(
                database, self.plugins, self.campaigns, self.hub, settings, self.transports, role=self.node
            )
            if settings().engine.enabled
            else None
        )
        self.node.attach(self.engine, self.transports)
        # Pause and Stop close the gates of this daemon's engine, or of every member's.
        self.campaigns.sending = self.node
        # Run by the daemon: every daemon reports the current rate, whichever daemons send.
        self.rates = RateMeter(database)
        reports = Reports(self.campaigns, self.rates, self.engine, lambda: settings().limits.max_watchers)
        previews = Previews(self.campaigns, self.transports, settings)
        self.contacts = ContactManager(database, lambda: settings().audience.default_region)
        tokens = PageTokens(database.read_sync(keys.get, keys.PAGE_TOKENS))
        api.add_servicers(
            CampaignService(self.campaigns, reports, previews, settings, tokens, self.recorder),
            ContactService(self.contacts, settings, tokens),
            ClusterService(self.node, tokens),
        )

    def close(self) -> None:
        """End the watch streams, so that shutdown does not wait on them; stop the import workers."""
        self.hub.close()
        self.contacts.close()

    async def reconfigure(self, settings: Settings) -> None:
        """Take the transports and channel-type options of reloaded settings; ConfigError keeps
        the running ones."""
        self.plugins.configure(settings)
        await self.transports.reconfigure()
