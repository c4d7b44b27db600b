"""The conformance kit stands apart from the daemon's gRPC layer."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_kit_loads_nothing_of_the_grpc_layer() -> None:
    """Importing campaignd.testing.conformance loads neither campaignd.api, the generated protos nor grpc."""
    probe = (
        "import json, sys, campaignd.testing.conformance; "
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] == 'grpc' or m.startswith(('campaignd.api', 'campaignd.v1')))))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []
