"""The conformance kit: it stands apart from the daemon's gRPC layer, and what it holds plugins to."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import time

import pytest

from campaignd.plugin import Recipient, SendResult, SendStatus
from campaignd.testing import conformance
from campaignd.testing.conformance import LagProbe


def test_the_kit_loads_nothing_of_the_grpc_layer() -> None:
    """Importing campaignd.testing.conformance loads neither campaignd.api, the generated protos nor grpc."""
    probe = (
        "import json, sys, campaignd.testing.conformance; "
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] == 'grpc' or m.startswith(('campaignd.api', 'campaignd.v1')))))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []


def test_the_lag_probe_sees_a_blocking_call_and_not_a_busy_machine() -> None:
    """A 0.3 s blocking call in the loop shows as a 0.3 s hold-up; a loop that only awaits shows
    none, whatever else the machine is doing."""

    async def run(blocking: bool) -> float:
        async with LagProbe() as probe:
            for _ in range(20):
                await asyncio.sleep(0.01)
            if blocking:
                time.sleep(0.3)  # noqa: ASYNC251 - the blocking call the probe must see
        return probe.worst

    assert asyncio.run(run(True)) >= 0.25
    assert asyncio.run(run(False)) < 0.1


def test_the_lag_probe_does_not_count_a_collection_of_what_the_test_process_made_before() -> None:
    """Two million objects made before the probe, as hundreds of tests before it leave: a full
    collection while the probe runs does not walk them (the daemon freezes what it made before
    serving too), so it shows as no hold-up."""
    made_before = [[i] for i in range(2_000_000)]

    async def run() -> float:
        async with LagProbe() as probe:
            await asyncio.sleep(0.01)
            gc.collect()
            await asyncio.sleep(0.01)
        return probe.worst

    began = time.perf_counter()
    gc.collect()
    unfrozen = time.perf_counter() - began
    assert unfrozen > 0.05, f"a collection took {unfrozen:.3f} s: too few objects to tell"
    assert asyncio.run(run()) < unfrozen / 2
    assert len(made_before) == 2_000_000


def test_the_kit_holds_part_ids_to_a_sent_message_and_its_parts() -> None:
    """Part ids name the parts of a SENT message: on another status, or fewer or more than its
    parts, the kit fails the plugin."""
    one = [Recipient(1, "+14155550100", {}, 1)]
    sent = SendResult(1, SendStatus.SENT, "a", parts=2, part_ids=("a", "b"))
    assert conformance._check_results([sent], one) == [sent]
    for wrong in (
        SendResult(1, SendStatus.FAILED, parts=2, part_ids=("a", "b")),
        SendResult(1, SendStatus.SENT, "a", parts=3, part_ids=("a", "b")),
        SendResult(1, SendStatus.SENT, "a", parts=2, part_ids=("a", "")),
    ):
        with pytest.raises(AssertionError, match="part"):
            conformance._check_results([wrong], one)


def test_the_kit_holds_ids_and_words_to_what_is_kept() -> None:
    """A provider or part id over 200 characters, a reason or outcome over 63: the daemon would
    cut them, so the kit fails the plugin."""
    one = [Recipient(1, "+14155550100", {}, 1)]
    longest = SendResult(1, SendStatus.SENT, "p" * 200, reason="r" * 63, outcome="o" * 63)
    assert conformance._check_results([longest], one) == [longest]
    for wrong in (
        SendResult(1, SendStatus.SENT, "p" * 201),
        SendResult(1, SendStatus.FAILED, reason="r" * 64),
        SendResult(1, SendStatus.DELIVERED, outcome="o" * 64),
        SendResult(1, SendStatus.SENT, "a", parts=2, part_ids=("a", "b" * 201)),
    ):
        with pytest.raises(AssertionError, match="longer than"):
            conformance._check_results([wrong], one)
