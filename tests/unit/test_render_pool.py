"""The render pool: real worker processes rendering templates, bounded in time and memory."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from campaignd.plugin import Recipient, TemplateError, TemplateSet
from campaignd.rendering.pool import RenderPool
from tests.hostile_templates import NESTED_LOOPS
from tests.timing import timed


@pytest.fixture
def pool() -> Iterator[RenderPool]:
    """A pool of two workers with a short time limit."""
    renderer = RenderPool(workers=2, timeout=0.5, memory_limit=256 << 20)
    yield renderer
    renderer.close()


def recipients(count: int, **attributes: object) -> list[Recipient]:
    """Recipients with a first name and the given attributes."""
    return [
        Recipient(n, f"reader{n}@example.org", {"attributes": {"first_name": f"Ada{n}", **attributes}}, 1)
        for n in range(count)
    ]


def wait_for_workers(pool: RenderPool, count: int) -> list[int]:
    """The pids of the pool's workers once `count` are running."""
    deadline = time.monotonic() + 30
    while len(pool.pids) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(pool.pids) == count
    return pool.pids


def test_renders_each_recipient_with_its_contact_variables_and_common_names(pool: RenderPool) -> None:
    """Every recipient gets its own contact, its variables and the common names, in order;
    static fields come back unchanged and HTML fields are escaped."""
    templates = TemplateSet(
        {
            "subject": "Hi {{ contact.first_name }} from {{ campaign }}",
            "html": "<p>{{ contact.plan }} {{ url }}</p>",
            "sender": "News",
        },
        html=frozenset({"html"}),
    )
    batch = recipients(250, plan="<b>Gold</b>")
    variables = [{"url": f"u{n}"} for n in range(250)]
    results = pool.render_now(templates, batch, variables, {"campaign": "campaigns/spring"})
    assert results == [
        {
            "subject": f"Hi Ada{n} from campaigns/spring",
            "html": f"<p>&lt;b&gt;Gold&lt;/b&gt; u{n}</p>",
            "sender": "News",
        }
        for n in range(250)
    ]


def test_the_event_loop_keeps_running_while_a_batch_renders(pool: RenderPool) -> None:
    """An awaited render leaves the event loop free: a ticker keeps ticking during a render that
    takes the full time limit."""

    async def scenario() -> tuple[list[object], float]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.ensure_future(ticker())
        started = time.monotonic()
        results: list[object] = list(await pool.render(TemplateSet({"t": NESTED_LOOPS}), recipients(1)))
        elapsed = time.monotonic() - started
        task.cancel()
        return [*results, ticks], elapsed

    [result, ticks], elapsed = asyncio.run(scenario())
    assert isinstance(result, TemplateError)
    assert result.limit == "time"
    assert isinstance(ticks, int)
    assert ticks >= elapsed / 0.01 / 4, f"the loop ticked {ticks} times in {elapsed:.2f} s"


def test_a_render_over_the_time_limit_fails_alone(pool: RenderPool) -> None:
    """Recipients whose render runs past the limit fail with limit "time"; the others render."""
    templates = TemplateSet(
        {"text": "{% if contact.slow %}" + NESTED_LOOPS + "{% endif %}ok {{ contact.first_name }}"}
    )
    batch = [*recipients(2), *recipients(1, slow=True), *recipients(2)]
    started = time.monotonic()
    results = pool.render_now(templates, batch)
    assert time.monotonic() - started < 5
    assert results[0] == {"text": "ok Ada0"}
    assert results[4] == {"text": "ok Ada1"}
    failed = results[2]
    assert isinstance(failed, TemplateError)
    assert (failed.limit, failed.field) == ("time", "text")
    assert str(failed) == "the text template took longer than the limit of 0.5 s"


@timed
def test_a_worker_that_does_not_stop_is_killed_and_replaced() -> None:
    """A worker that goes silent mid-render (here stopped with SIGSTOP, as one stuck in a C call
    would be) is killed once the limit and its grace have passed; that recipient fails, the
    rest of the job renders on a new worker."""
    pool = RenderPool(workers=2, timeout=2.0)
    try:
        _stop_a_worker_mid_render(pool)
    finally:
        pool.close()


def _stop_a_worker_mid_render(pool: RenderPool) -> None:
    before = wait_for_workers(pool, 2)
    templates = TemplateSet(
        {"text": "{% if contact.slow %}" + NESTED_LOOPS + "{% endif %}ok {{ contact.first_name }}"}
    )
    batch = [*recipients(1, slow=True), *recipients(3)]

    def stop_the_busy_worker() -> None:
        # Well into the slow render, the worker rendering it is the one using the CPU.
        time.sleep(0.5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for pid in before:
                with open(f"/proc/{pid}/stat") as stat:
                    if stat.read().split()[2] == "R":
                        os.kill(pid, signal.SIGSTOP)
                        return
            time.sleep(0.01)

    stopper = threading.Thread(target=stop_the_busy_worker)
    stopper.start()
    results = pool.render_now(templates, batch)
    stopper.join()
    failed = results[0]
    assert isinstance(failed, TemplateError)
    assert failed.limit == "time"
    assert "was stopped" in str(failed)
    assert results[1:] == [{"text": f"ok Ada{n}"} for n in range(3)]
    after = wait_for_workers(pool, 2)
    assert set(after) != set(before)
    assert len(set(after) & set(before)) == 1


def test_a_template_over_the_memory_limit_fails_and_the_worker_goes_on(pool: RenderPool) -> None:
    """A template asking for a gigabyte fails with limit "memory" in the worker; the same worker
    renders the next recipient."""
    before = wait_for_workers(pool, 2)
    templates = TemplateSet({"text": "{% if contact.big %}{{ 'x'.ljust(10**9) }}{% endif %}ok"})
    results = pool.render_now(templates, [*recipients(1, big=True), *recipients(1)])
    failed = results[0]
    assert isinstance(failed, TemplateError)
    assert failed.limit == "memory"
    assert str(failed) == "the text template needed more memory than the limit of 256 MiB"
    assert results[1] == {"text": "ok"}
    assert pool.pids == before


def test_errors_in_templates_are_per_recipient_and_name_the_field(pool: RenderPool) -> None:
    """A template that fails for one recipient fails only that one, naming the field."""
    templates = TemplateSet({"subject": "{{ contact.plan.name }}", "text": "fine"})
    results = pool.render_now(templates, [*recipients(1, plan={"name": "Gold"}), *recipients(1)])
    assert results[0] == {"subject": "Gold", "text": "fine"}
    failed = results[1]
    assert isinstance(failed, TemplateError)
    assert (failed.field, failed.limit) == ("subject", "")
    assert "the subject template failed" in str(failed)


def test_a_template_that_does_not_compile_fails_every_recipient(pool: RenderPool) -> None:
    """A set that does not compile answers every recipient with the compile error."""
    results = pool.render_now(TemplateSet({"text": "{% for %}"}), recipients(3))
    assert all(isinstance(r, TemplateError) and "does not compile" in str(r) for r in results)


def test_static_templates_need_no_worker(pool: RenderPool) -> None:
    """Fields without template syntax come back as they are, even with the pool closed."""
    pool.close()
    assert pool.render_now(TemplateSet({"text": "Hello"}), recipients(2)) == [{"text": "Hello"}] * 2
