"""ClusterService: the daemons that share this daemon's database."""

from __future__ import annotations

from typing import Any

from grpc import aio

from campaignd.api import convert
from campaignd.api.convert import Violations
from campaignd.api.errors import unary
from campaignd.cluster.node import Cluster, SingleNode, View
from campaignd.store.cluster import Member
from campaignd.v1 import cluster_service_pb2 as cl
from campaignd.v1 import cluster_service_pb2_grpc as cl_grpc

Context = aio.ServicerContext[Any, Any]
PAGES = "clusterMembers"  # what page tokens of ListClusterMembers are bound to


def member_message(member: Member, view: View) -> cl.ClusterMember:
    """The ClusterMember resource for a member as the cluster sees it."""
    return cl.ClusterMember(
        name=f"clusterMembers/{member.id}",
        state=cl.ClusterMember.LIVE if member.live else cl.ClusterMember.LAPSED,
        leader=member.id == view.leader,
        sends=member.sends,
        owner=member.owner,
        hostname=member.hostname,
        pid=member.pid,
        version=member.version,
        transports=list(member.transports),
        join_time=convert.timestamp(member.join_time),
        heartbeat_time=convert.timestamp(member.heartbeat_time),
        expire_time=convert.timestamp(member.lease_expiry),
    )


class ClusterService(cl_grpc.ClusterServiceServicer):
    """The gRPC face of the cluster's membership."""

    def __init__(self, node: Cluster | SingleNode, tokens: convert.PageTokens) -> None:
        self.node = node
        self.tokens = tokens

    @unary
    async def ListClusterMembers(
        self, request: cl.ListClusterMembersRequest, context: Context
    ) -> cl.ListClusterMembersResponse:
        v = Violations()
        page = self.tokens.page(v, request, PAGES, 100, self.node.settings().limits.max_page_size)
        v.raise_if_any()
        view = await self.node.view()
        after = str(page.position["a"]) if page.position is not None else ""
        shown, next_token = page.result([m for m in view.members if m.id > after][: page.limit], _position)
        return cl.ListClusterMembersResponse(
            members=[member_message(m, view) for m in shown],
            next_page_token=next_token,
            answered_by=f"clusterMembers/{view.me}",
        )


def _position(member: Member) -> dict[str, str | int]:
    return {"a": member.id}
