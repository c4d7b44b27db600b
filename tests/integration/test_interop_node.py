"""A client in another language (Node.js, built only from the .proto files) drives the lifecycle."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
from typing import Any

import google.api
import pytest

from campaignd.v1 import campaign_service_pb2, campaign_service_pb2_grpc, resources_pb2
from tests.integration.conftest import API_ONLY, DaemonFactory

REPO = pathlib.Path(__file__).resolve().parents[2]
INTEROP_DIR = REPO / "tests" / "interop"
PROTO_DIR = REPO / "proto"
# The engine is off (an API-only daemon): the client drives the lifecycle alone.
NPM_CI_TIMEOUT = 600.0
CLIENT_TIMEOUT = 120.0


def googleapis_include_dir() -> pathlib.Path:
    """The directory holding google/api/*.proto and google/rpc/*.proto (googleapis-common-protos)."""
    return pathlib.Path(google.api.__path__[0]).parent.parent


def _npm_ci_needed() -> bool:
    # npm writes node_modules/.package-lock.json on every install; older than the lock means stale.
    installed = INTEROP_DIR / "node_modules" / ".package-lock.json"
    if not installed.exists():
        return True
    return installed.stat().st_mtime < (INTEROP_DIR / "package-lock.json").stat().st_mtime


@pytest.fixture(scope="module")
def node_client() -> list[str]:
    """The command that runs the Node client, after `npm ci` when node_modules is missing or stale."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the Node.js interop test")
    env = {**os.environ, "npm_config_update_notifier": "false"}
    if _npm_ci_needed():
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=INTEROP_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=NPM_CI_TIMEOUT,
            check=False,
        )
        assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"
    return [node, str(INTEROP_DIR / "client.mjs")]


def _steps(stdout: str) -> dict[str, dict[str, Any]]:
    steps = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            steps[record["step"]] = record
    return steps


def test_node_client_drives_the_lifecycle(node_client: list[str], daemon_factory: DaemonFactory) -> None:
    """Node creates (idempotently), launches, pauses, resumes, stops, is refused, reads history."""
    daemon = daemon_factory(API_ONLY).start().ensure_lists("interop")
    include_dirs = [str(PROTO_DIR), str(googleapis_include_dir())]
    result = subprocess.run(
        [*node_client, daemon.address, *include_dirs],
        cwd=INTEROP_DIR,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
        check=False,
    )
    report = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\ndaemon log:\n{daemon.log_text()}"
    assert result.returncode == 0, report

    steps = _steps(result.stdout)
    expected = ["connect", "create", "create_again", "launch", "pause", "resume", "stop"]
    expected += ["pause_stopped", "history", "done"]
    assert list(steps) == expected, report
    assert all(step["ok"] for step in steps.values()), report
    name = steps["done"]["campaign"]

    with daemon.channel() as channel:
        stub = campaign_service_pb2_grpc.CampaignServiceStub(channel)
        campaign = stub.GetCampaign(campaign_service_pb2.GetCampaignRequest(name=name), timeout=10)
        listed = stub.ListCampaigns(
            campaign_service_pb2.ListCampaignsRequest(labels={"suite": "interop"}), timeout=10
        )
    assert campaign.state == resources_pb2.Campaign.STOPPED
    assert [(c.channel_id, c.state) for c in campaign.channels] == [("main", resources_pb2.Channel.STOPPED)]
    assert campaign.display_name == "Interop from Node.js"
    assert dict(campaign.labels) == {"suite": "interop", "client": "node"}
    assert campaign.channels[0].content["text"] == "hello"
    # The repeated CreateCampaign made no second campaign.
    assert [c.name for c in listed.campaigns] == [name]
