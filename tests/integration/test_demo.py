"""`make demo` runs a real campaign from start to end."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_runs_a_campaign_with_pause_and_resume(tmp_path: pathlib.Path) -> None:
    """The demo imports 10,000 contacts, sends to all of them, and nothing arrives while paused."""
    run = subprocess.run(
        [sys.executable, "-m", "campaignd.demo"], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "Created:   10000" in out
    paused = re.search(r"paused: (\d+) messages had arrived when Pause returned, (\d+) two seconds", out)
    assert paused is not None
    assert paused.group(1) == paused.group(2)
    assert 0 < int(paused.group(1)) < 10_000
    assert "the SMTP server received 10000 messages" in out
    assert re.search(r"mail\s+email\s+COMPLETED\s+10000\s+0\s+0\s+10000", out)
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in out
    assert "campaignd exited with status 0" in out
