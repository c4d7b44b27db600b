"""A small client for tests: builds requests, reads error details, imports contacts, waits for a
campaign, reaches into the database."""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import struct_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import campaign_service_pb2_grpc as svc_grpc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import contact_service_pb2_grpc as cs_grpc
from campaignd.v1 import resources_pb2 as pb

ATTESTATION = pb.ConsentAttestation(accepted_by="tests", terms_version="v1")
_ids = itertools.count()


@dataclass
class Failure:
    """What a failed call said."""

    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict[str, str]
    fields: list[str]


def failure(error: grpc.RpcError) -> Failure:
    """Decode the google.rpc.Status details of a failed call."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    reason, metadata, fields = "", {}, []
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    return Failure(error.code(), error.details() or "", reason, metadata, fields)


def expect_failure(call: Callable[..., Any], code: grpc.StatusCode) -> Failure:
    """Make a call that must fail with `code`; what it said."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    found = failure(caught.value)
    assert found.code == code, found
    return found


def content(**values: Any) -> struct_pb2.Struct:
    """A Struct of `values`: a channel's content, a contact's attributes."""
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def channel(channel_id: str = "main", type_: str = "test-email", text: str = "hello") -> pb.Channel:
    """A DRAFT channel of a test type."""
    return pb.Channel(channel_id=channel_id, type=type_, content=content(text=text))


def future(minutes: int = 60) -> timestamp_pb2.Timestamp:
    """A timestamp `minutes` from now."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes))
    return stamp


class Client:
    """CampaignService over one channel, with shortcuts for the common calls."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = svc_grpc.CampaignServiceStub(channel)
        self.contacts = cs_grpc.ContactServiceStub(channel)
        ensure_list(self.contacts, "x")

    def create(self, *channels: pb.Channel, campaign_id: str = "", **fields: Any) -> pb.Campaign:
        """A new campaign with a target list and the given channels."""
        campaign = pb.Campaign(
            display_name=fields.pop("display_name", "Test"),
            audience=fields.pop("audience", pb.Audience(target_lists=["lists/x"])),
            channels=list(channels) or [channel()],
            **fields,
        )
        return self.stub.CreateCampaign(
            svc.CreateCampaignRequest(
                campaign=campaign, campaign_id=campaign_id or f"t{next(_ids)}-{id(self):x}"
            )
        )

    def get(self, name: str) -> pb.Campaign:
        """GetCampaign."""
        return self.stub.GetCampaign(svc.GetCampaignRequest(name=name))

    def history(self, name: str) -> list[pb.CampaignEvent]:
        """Every history entry."""
        events: list[pb.CampaignEvent] = []
        token = ""
        while True:
            page = self.stub.ListCampaignHistory(
                svc.ListCampaignHistoryRequest(parent=name, page_size=1000, page_token=token)
            )
            events.extend(page.events)
            token = page.next_page_token
            if not token:
                return events

    def launch(self, name: str, channel_id: str = "", **kw: Any) -> pb.Campaign:
        """LaunchCampaign with an attestation."""
        return self.stub.LaunchCampaign(
            svc.LaunchCampaignRequest(name=name, channel_id=channel_id, attestation=ATTESTATION, **kw)
        )

    def schedule(self, name: str, channel_id: str = "") -> pb.Campaign:
        """ScheduleCampaign an hour ahead."""
        return self.stub.ScheduleCampaign(
            svc.ScheduleCampaignRequest(
                name=name, channel_id=channel_id, schedule_time=future(), attestation=ATTESTATION
            )
        )

    def pause(self, name: str, channel_id: str = "", **kw: Any) -> pb.Campaign:
        """PauseCampaign."""
        return self.stub.PauseCampaign(svc.PauseCampaignRequest(name=name, channel_id=channel_id, **kw))

    def resume(self, name: str, channel_id: str = "") -> pb.Campaign:
        """ResumeCampaign."""
        return self.stub.ResumeCampaign(svc.ResumeCampaignRequest(name=name, channel_id=channel_id))

    def stop(self, name: str, channel_id: str = "") -> pb.Campaign:
        """StopCampaign."""
        return self.stub.StopCampaign(svc.StopCampaignRequest(name=name, channel_id=channel_id))

    def channel_state(self, name: str) -> int:
        """The state of the campaign's first channel."""
        return self.get(name).channels[0].state

    def report(self, name: str) -> pb.CampaignReport:
        """GetCampaignReport."""
        return self.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=name))

    def messages(self, name: str, *states: pb.Message.State.ValueType) -> list[pb.Message]:
        """Every message of the campaign (in `states`, when given), over all pages."""
        found: list[pb.Message] = []
        token = ""
        while True:
            page = self.stub.ListMessages(
                svc.ListMessagesRequest(parent=name, states=states, page_size=1000, page_token=token)
            )
            found.extend(page.messages)
            token = page.next_page_token
            if not token:
                return found

    def suppressed(self, address: str, channel_type: str) -> bool:
        """Whether CheckSuppression says `address` is suppressed for `channel_type`."""
        request = cs.CheckSuppressionRequest(address=address, channel_type=channel_type)
        return self.contacts.CheckSuppression(request).suppressed

    def finished(self, name: str, seconds: float = 120) -> pb.Campaign:
        """The campaign once it has ended: COMPLETED, FAILED or STOPPED."""
        ended = (pb.Campaign.COMPLETED, pb.Campaign.FAILED, pb.Campaign.STOPPED)
        wait_until(lambda: self.get(name).state in ended, seconds, f"{name} to end")
        return self.get(name)

    def count(self, **filters: Any) -> int:
        """How many campaigns ListCampaigns returns, over all pages."""
        total, token = 0, ""
        while True:
            page = self.stub.ListCampaigns(
                svc.ListCampaignsRequest(page_size=1000, page_token=token, show_archived=True, **filters)
            )
            total += len(page.campaigns)
            token = page.next_page_token
            if not token:
                return total


def ensure_list(stub: cs_grpc.ContactServiceStub, list_id: str) -> None:
    """Create the list `lists/{list_id}` unless it exists."""
    try:
        stub.CreateList(cs.CreateListRequest(list_id=list_id, list=cs.ContactList(display_name=list_id)))
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise


def import_contacts(
    stub: cs_grpc.ContactServiceStub, list_id: str, rows: Sequence[cs.ContactRow]
) -> cs.ImportContactsResponse:
    """Import `rows` into `lists/{list_id}` (created unless it exists), 1,000 rows a message."""
    ensure_list(stub, list_id)
    requests = [cs.ImportContactsRequest(options=cs.ImportOptions(list=f"lists/{list_id}"))]
    requests += [cs.ImportContactsRequest(rows=rows[i : i + 1000]) for i in range(0, len(rows), 1000)]
    return stub.ImportContacts(iter(requests), timeout=300)


def wait_until(predicate: Callable[[], bool], seconds: float = 120, what: str = "") -> None:
    """Poll until `predicate` holds; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def force_state(database_url: str, name: str, state: str) -> None:
    """Put every channel of a campaign in `state` behind the daemon's back (states the engine reaches)."""
    campaign_id = name.removeprefix("campaigns/")
    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE channels SET state = :state WHERE campaign_id = :id"),
            {"state": state, "id": campaign_id},
        )
        conn.execute(
            sa.text("UPDATE campaigns SET state = :state, version = version + 1 WHERE id = :id"),
            {"state": state, "id": campaign_id},
        )
    engine.dispose()
