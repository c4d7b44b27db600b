"""What comes back from an SMSC: delivery receipts for the parts of sent messages, and inbound
messages whose text is an opt-out (or opt-in) keyword. Both become InboundEvents, reported in
batches."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from collections import OrderedDict
from typing import NamedTuple

from campaignd.plugin import EventKind, EventSink, InboundEvent

OPT_OUT = frozenset(
    {"STOP", "END", "CANCEL", "UNSUBSCRIBE", "QUIT", "REVOKE", "OPT OUT", "OPTOUT", "STOPALL"}
)
OPT_IN = frozenset({"START", "UNSTOP"})
# \w counts "_" as a word character; it is punctuation here ("STOP_", "opt_out").
_PUNCTUATION = re.compile(r"[\W_]+")

DELIVERED_STATES = frozenset({"DELIVRD", "DELIVERED"})
FINAL_FAILURES = frozenset({"UNDELIV", "EXPIRED", "REJECTD", "DELETED", "UNKNOWN", "FAILED"})
_RECEIPT_FIELD = re.compile(r"(id|sub|dlvrd|submit date|done date|stat|err|text):", re.IGNORECASE)


def keyword(text: str) -> str:
    """The text as a keyword: upper case, punctuation and surrounding space dropped, inner
    spaces single ("  opt-out! " → "OPT OUT")."""
    return " ".join(_PUNCTUATION.sub(" ", text).split()).upper()


def reply_kind(text: str) -> EventKind | None:
    """OPTED_OUT for an opt-out keyword, OPTED_IN for START/UNSTOP, else None."""
    word = keyword(text)
    if word in OPT_OUT:
        return EventKind.OPTED_OUT
    if word in OPT_IN:
        return EventKind.OPTED_IN
    return None


def e164(number: str) -> str:
    """An inbound source address as E.164: digits with a leading +."""
    digits = "".join(c for c in number if c.isdigit())
    return f"+{digits}" if digits else number


class Receipt(NamedTuple):
    """A delivery receipt for one part: the SMSC's id of the part, its final state and error."""

    part_id: str
    stat: str
    err: str = ""


def parse_receipt(text: str, receipted_id: str = "") -> Receipt | None:
    """The receipt in a deliver_sm's text ("id:… sub:… stat:DELIVRD err:000 …"); the
    receipted_message_id parameter wins over the text's id. None when it has no id or stat."""
    fields: dict[str, str] = {}
    matches = list(_RECEIPT_FIELD.finditer(text))
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following else len(text)
        fields[match.group(1).lower()] = text[match.end() : end].strip()
    part_id = receipted_id or fields.get("id", "")
    stat = fields.get("stat", "").upper()
    if not part_id or not stat:
        return None
    return Receipt(part_id, stat, fields.get("err", ""))


class Receipts:
    """Turns part receipts into events: a one-part message's receipt is about the message, a
    part of a message of several is reported as a part (`InboundEvent.part`), and the daemon,
    which keeps the parts of such messages (`SendResult.part_ids`), makes the message DELIVERED
    once every part is and FAILED at its first failed part.

    A send call makes its parts known when it returns, just before the daemon records the
    results, so that a receipt does not reach the daemon before its message's provider id. A
    receipt that comes before its part is known waits for it: until every send call in progress
    when it came has returned, and `hold` seconds at least. One whose part never became known
    (a message sent before this process started, or by another cluster member whose bind the
    SMSC did not use for it) is then reported as a part: the daemon finds its message by the
    parts it kept, or by the message's provider id (a one-part message's id, or its first
    part's)."""

    # A receipt whose part is unknown once the send calls in progress when it came returned
    # goes to the daemon a moment later: the daemon finds its message by the parts it keeps, and
    # keeps one it cannot find yet (its send not recorded yet) for minutes.
    def __init__(self, out: EventQueue, *, hold: float = 1.0, limit: int = 1_000_000) -> None:
        self.out = out
        self.hold = hold
        self.limit = limit
        # part id -> whether its message has several parts (kept by the daemon)
        self.parts: OrderedDict[str, bool] = OrderedDict()
        # part id -> (when it came, the newest send call then, the receipt), in arrival order
        self.early: OrderedDict[str, tuple[float, int, Receipt]] = OrderedDict()
        self.calls = itertools.count(1)
        self.newest_call = 0
        self.calls_in_progress: set[int] = set()
        self.next_expiry = 0.0

    def begin(self) -> int:
        """A send call starts; returns its number, for `end`."""
        call = self.newest_call = next(self.calls)
        self.calls_in_progress.add(call)
        return call

    def end(self, call: int) -> None:
        """A send call returned (its parts were made known with `sent`)."""
        self.calls_in_progress.discard(call)

    def sent(self, part_ids: list[str]) -> None:
        """A message was accepted as these parts; the first part's id is its provider id."""
        if not part_ids:
            return
        several = len(part_ids) > 1
        parts = self.parts
        for part_id in part_ids:
            parts[part_id] = several
        while len(parts) > self.limit:
            parts.popitem(last=False)
        if self.early:
            for part_id in part_ids:
                early = self.early.pop(part_id, None)
                if early is not None:
                    self._apply(early[2])

    def delivered_already(self, part_ids: list[str]) -> bool:
        """Whether every part of a message just accepted was already reported DELIVERED (the
        receipts came before the send call returned); if so they are used up, and the message
        needs no event: it is recorded DELIVERED at once."""
        early = self.early
        for part_id in part_ids:
            waiting = early.get(part_id)
            if waiting is None or waiting[2].stat not in DELIVERED_STATES:
                return False
        for part_id in part_ids:
            del early[part_id]
        return True

    def receipt(self, receipt: Receipt) -> None:
        """Apply one part's receipt."""
        if receipt.part_id in self.parts:
            self._apply(receipt)
            return
        now = time.monotonic()
        # Looked at once a second: a receipt per part comes, and nearly all wait a moment.
        if now >= self.next_expiry:
            self.next_expiry = now + 1.0
            self._expire()
        self.early[receipt.part_id] = (now, self.newest_call, receipt)
        # Only the queue's task reports it when its hold ends: after a restart nothing else
        # may come to start that task.
        self.out.watch()

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.hold
        oldest_call = min(self.calls_in_progress, default=self.newest_call + 1)
        while self.early:
            part_id, (seen, newest_call, receipt) = next(iter(self.early.items()))
            if seen > cutoff or newest_call >= oldest_call:
                break
            del self.early[part_id]
            self._report(receipt, part=True)

    def _apply(self, receipt: Receipt) -> None:
        if receipt.stat not in DELIVERED_STATES and receipt.stat not in FINAL_FAILURES:
            return  # an intermediate state (ENROUTE, ACCEPTD): the final one is still to come
        several = self.parts.pop(receipt.part_id, None)
        if several is not None:
            self._report(receipt, part=several)

    def _report(self, receipt: Receipt, *, part: bool) -> None:
        if receipt.stat in DELIVERED_STATES:
            self.out.put(InboundEvent(EventKind.DELIVERED, provider_id=receipt.part_id, part=part))
        elif receipt.stat in FINAL_FAILURES:
            detail = f"receipt stat:{receipt.stat}" + (f" err:{receipt.err}" if receipt.err else "")
            stat = receipt.stat
            event = InboundEvent(EventKind.FAILED, receipt.part_id, detail=detail, reason=stat, part=part)
            self.out.put(event)

    def flush_expired(self) -> None:
        """Report receipts that waited out their hold."""
        self._expire()


class EventQueue:
    """Events on their way to the daemon, handed over in batches by one task; kept and tried
    again when the daemon cannot store them yet."""

    def __init__(
        self, sink: EventSink, channel_type: str, *, interval: float = 0.05, batch: int = 2000
    ) -> None:
        self.sink = sink
        self.channel_type = channel_type
        self.interval = interval
        self.batch = batch
        self.queue: list[InboundEvent] = []
        self.ready = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.ticks: list[Receipts] = []
        self._task: asyncio.Task[None] | None = None

    def put(self, event: InboundEvent) -> None:
        """Queue one event."""
        self.queue.append(event)
        self.idle.clear()
        self.ready.set()
        self.watch()

    def watch(self) -> None:
        """Start the task that hands events over and, once a second, reports the receipts
        whose hold ended."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(1.0):
                    await self.ready.wait()
            except TimeoutError:
                for receipts in self.ticks:
                    receipts.flush_expired()
                if not self.queue:
                    continue
            self.ready.clear()
            await asyncio.sleep(self.interval)
            while self.queue:
                batch, self.queue = self.queue[: self.batch], self.queue[self.batch :]
                try:
                    await self.sink.record(self.channel_type, batch)
                except Exception:  # the store is unavailable now: keep them and try again
                    self.queue[:0] = batch
                    await asyncio.sleep(1.0)
            self.idle.set()

    async def drain(self, within: float = 5.0) -> None:
        """Wait until every queued event was handed over (or `within` seconds passed)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self.idle.wait()

    async def close(self) -> None:
        """Hand over what is queued, then stop."""
        await self.drain()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
