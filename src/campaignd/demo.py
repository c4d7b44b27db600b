"""`make demo`: start the daemon on its embedded default (SQLite) and show it healthy."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

DEMO_DIR = pathlib.Path(".demo")


def _wait_serving(address: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"campaignd exited with status {proc.returncode}")
        try:
            with grpc.insecure_channel(address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return int(reply.status)
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"campaignd did not become healthy within {timeout:.0f}s")


def main() -> int:
    """Run the demo; returns the exit status."""
    DEMO_DIR.mkdir(exist_ok=True)
    runtime = pathlib.Path(tempfile.mkdtemp(prefix="campaignd-demo-"))
    config = DEMO_DIR / "config.toml"
    config.write_text(
        f'[daemon]\nstate_directory = "{DEMO_DIR.resolve() / "state"}"\nruntime_directory = "{runtime}"\n',
        encoding="utf-8",
    )
    socket_path = runtime / "campaignd.sock"
    address = f"unix:{socket_path}"
    print(f"== starting campaignd (SQLite in {DEMO_DIR / 'state'}, socket {socket_path})", flush=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "campaignd.daemon", "serve", "--config", str(config)], env=dict(os.environ)
    )
    try:
        status = _wait_serving(address, proc)
        print(f"== health: {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}", flush=True)
        with grpc.insecure_channel(address) as channel:
            services = sorted(ProtoReflectionDescriptorDatabase(channel).get_services())
        print("== services (by server reflection):", *services, sep="\n   ", flush=True)
    finally:
        print("== stopping campaignd (SIGTERM)", flush=True)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        shutil.rmtree(runtime, ignore_errors=True)
    print(f"== campaignd exited with status {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
