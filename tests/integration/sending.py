"""Campaigns on the test channel double (`campaignd.testing.channels`) in a daemon whose engine
ticks fast, and what the double's sink file says was sent."""

from __future__ import annotations

import collections
import pathlib
from typing import Any

from google.protobuf import struct_pb2

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import Client, import_contacts, wait_until


def fast_engine(sending_timeout: float = 3.0) -> str:
    """An [engine] table that ticks every 50 ms and retries after 200 ms, in batches of 50."""
    return (
        "[engine]\ntick_interval = 0.05\nretry_delay = 0.2\n"
        f"sending_timeout = {sending_timeout}\nbatch_size = 50\n"
    )


FAST = fast_engine()


def double_content(**values: Any) -> struct_pb2.Struct:
    """Content for the double: a text, and the keys that steer its sends (sink, delay_ms, ...)."""
    struct = struct_pb2.Struct()
    struct.update({"text": "hello", **values})
    return struct


def people(client: Client, list_id: str, count: int, start: int = 0) -> str:
    """A new list of `count` contacts, p{start}@{list_id}.example.org and on; its name."""
    rows = [cs.ContactRow(email=f"p{i}@{list_id}.example.org") for i in range(start, start + count)]
    return import_list(client, list_id, rows)


def import_list(client: Client, list_id: str, rows: list[cs.ContactRow]) -> str:
    """A list of the contacts `rows`, every one of them new; its name."""
    assert import_contacts(client.contacts, list_id, rows).created == len(rows)
    return f"lists/{list_id}"


def double_campaign(
    client: Client,
    target: str,
    *,
    type_: str = "test-email",
    guard: pb.GuardSettings | None = None,
    ambiguous: pb.Channel.AmbiguousSends.ValueType = pb.Channel.AMBIGUOUS_SENDS_UNSPECIFIED,
    rate: float = 0,
    **content: Any,
) -> pb.Campaign:
    """A DRAFT campaign of one channel of the double's `type_` to the list `target`."""
    channel = pb.Channel(
        channel_id="main",
        type=type_,
        content=double_content(**content),
        ambiguous_sends=ambiguous,
        rate_limit=rate,
    )
    return client.stub.CreateCampaign(
        svc.CreateCampaignRequest(
            campaign=pb.Campaign(
                display_name="Double",
                audience=pb.Audience(target_lists=[target]),
                guard=guard,
                channels=[channel],
            )
        )
    )


def sent_campaign(client: Client, list_id: str, count: int) -> tuple[pb.Campaign, list[pb.Message]]:
    """A campaign sent to a new list of `count` people and completed; its messages by address."""
    campaign = double_campaign(client, people(client, list_id, count))
    client.launch(campaign.name)
    wait_until(lambda: client.channel_state(campaign.name) == pb.Channel.COMPLETED, 30, "the campaign")
    messages = client.stub.ListMessages(svc.ListMessagesRequest(parent=campaign.name)).messages
    return campaign, sorted(messages, key=lambda m: m.address)


def sink_log(sink: pathlib.Path) -> list[tuple[float, str]]:
    """Each send the double started, in order: when (Unix time) and to whom."""
    if not sink.exists():
        return []
    lines = sink.read_text().splitlines()
    return [(float(t), a) for t, a in (line.split(" ", 1) for line in lines)]


def sink_counts(sink: pathlib.Path) -> collections.Counter[str]:
    """How many sends to each address the double started."""
    return collections.Counter(address for _, address in sink_log(sink))
