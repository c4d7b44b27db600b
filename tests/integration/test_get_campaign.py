"""GetCampaign keeps its answers (api/answers.py) only while the campaign is unchanged, whichever
daemon on the database changed it."""

from __future__ import annotations

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import field_mask_pb2

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import Client
from tests.integration.conftest import API_ONLY, DaemonFactory


@pytest.mark.postgres
def test_get_campaign_answers_what_another_daemon_changed(daemon_factory: DaemonFactory, pg_url: str) -> None:
    """Daemon A, asked for a campaign before, answers it as daemon B changed it since: renamed,
    then deleted (NOT_FOUND), then created again under the same id at the same version. (On
    SQLite one daemon holds the database: a second one is refused, test_startup.py.)"""
    config = API_ONLY + f'[database]\nurl = "{pg_url}"\n'
    first, second = (daemon_factory(config, name=n).start() for n in "ab")
    with first.channel() as channel_a, second.channel() as channel_b:
        a, b = Client(channel_a), Client(channel_b)
        made = b.create(campaign_id="kept", display_name="before")
        assert a.get(made.name) == made
        assert a.get(made.name).display_name == "before"

        renamed = b.stub.UpdateCampaign(
            svc.UpdateCampaignRequest(
                campaign=pb.Campaign(name=made.name, display_name="after"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            )
        )
        assert a.get(made.name) == renamed
        assert renamed.display_name == "after"

        b.stub.DeleteCampaign(svc.DeleteCampaignRequest(name=made.name))
        with pytest.raises(grpc.RpcError) as missing:
            a.get(made.name)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND

        again = b.create(campaign_id="kept", display_name="before")
        assert again.etag == made.etag
        assert a.get(made.name) == again
        assert again.create_time != made.create_time


@pytest.mark.postgres
def test_get_campaign_answers_after_its_connections_to_postgresql_were_ended(
    daemon_factory: DaemonFactory, pg_url: str
) -> None:
    """The server ends every session of the daemon (a restart, a failover, an administrator):
    GetCampaign goes on answering, and answers what changed since."""
    daemon = daemon_factory(API_ONLY + f'[database]\nurl = "{pg_url}"\n').start()
    admin = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with daemon.channel() as channel:
            client = Client(channel)
            made = client.create(campaign_id="kept", display_name="before")
            for _ in range(3):
                assert client.get(made.name) == made
            with admin.connect() as conn:
                ended = conn.execute(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalar_one()
            assert ended >= 1
            assert client.get(made.name) == made
            renamed = client.stub.UpdateCampaign(
                svc.UpdateCampaignRequest(
                    campaign=pb.Campaign(name=made.name, display_name="after"),
                    update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
                )
            )
            assert client.get(made.name) == renamed
    finally:
        admin.dispose()
