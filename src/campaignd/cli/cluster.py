"""`campaignctl cluster`: the daemons that share the database, and which one leads."""

from __future__ import annotations

import argparse

from campaignd.cli.arguments import Command, no_arguments
from campaignd.cli.connection import EXIT_OK, Client
from campaignd.cli.render import local_time, print_json, table
from campaignd.v1 import cluster_service_pb2 as cl


def run_cluster(client: Client, args: argparse.Namespace) -> int:
    """cluster: every member, with its state, role, heartbeat and lease."""
    members: list[cl.ClusterMember] = []
    request = cl.ListClusterMembersRequest(page_size=1000)
    while True:
        reply = client.call(client.cluster.ListClusterMembers, request)
        members.extend(reply.members)
        if not reply.next_page_token:
            break
        request.page_token = reply.next_page_token
    if client.json:
        print_json(cl.ListClusterMembersResponse(members=members, answered_by=reply.answered_by))
        return EXIT_OK
    rows = [
        [
            m.name.removeprefix("clusterMembers/") + (" *" if m.name == reply.answered_by else ""),
            cl.ClusterMember.State.Name(m.state),
            "leader" if m.leader else ("sends" if m.sends else "api only"),
            m.hostname,
            str(m.pid),
            local_time(m.heartbeat_time),
            local_time(m.expire_time),
            m.version,
        ]
        for m in members
    ]
    print(table(["MEMBER", "STATE", "ROLE", "HOST", "PID", "HEARTBEAT", "LEASE EXPIRES", "VERSION"], rows))
    print("* the daemon that answered")
    return EXIT_OK


CLUSTER = Command(
    "cluster",
    "list the daemons sharing the database, the leader and their heartbeats",
    no_arguments,
    run_cluster,
)
