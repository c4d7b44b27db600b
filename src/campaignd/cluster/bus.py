"""Messages between the members of a cluster over PostgreSQL's LISTEN/NOTIFY.

One connection listens and nothing else (psycopg holds it while it waits for notifications);
another sends. Every member listens on one channel and gets every message, its own included;
a message is a small JSON object whose "k" says what it is. NOTIFY is delivered only to
sessions listening when it commits, so what must not be missed is sent again until answered
(see barrier.py). While the listening connection is down, this member may not send: it could
miss a Pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import psycopg

from campaignd import logs

log = logs.get("campaignd.cluster")
CHANNEL = "campaignd_cluster"
RECONNECT = (0.1, 5.0)  # seconds between attempts to listen again: first, at most


class Bus:
    """Sends messages to every member and hands the ones that arrive to `handler`."""

    def __init__(self, connect: Mapping[str, Any], handler: Callable[[dict[str, Any]], None]) -> None:
        self._connect_args = dict(connect)
        self._handler = handler
        self._listening: psycopg.AsyncConnection[Any] | None = None
        self._sending: psycopg.AsyncConnection[Any] | None = None
        self._send_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._posts: set[asyncio.Task[None]] = set()
        self.listening = False
        # Called after listening again: messages may have been missed meanwhile.
        self.on_reconnect: Callable[[], None] | None = None

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(autocommit=True, **self._connect_args)

    async def start(self) -> None:
        """Listen; raises psycopg.Error when the server cannot be reached."""
        await self._listen_again()
        self._task = asyncio.create_task(self._receive(), name="cluster bus")

    async def _listen_again(self) -> None:
        connection = await self._connect()
        await connection.execute(f"LISTEN {CHANNEL}")
        self._listening = connection
        self.listening = True

    async def _receive(self) -> None:
        delay = RECONNECT[0]
        while True:
            try:
                if self._listening is None:
                    await self._listen_again()
                    log.warning("listening to the other members again")
                    if self.on_reconnect is not None:
                        self.on_reconnect()
                delay = RECONNECT[0]
                assert self._listening is not None
                async for notify in self._listening.notifies():
                    self._dispatch(notify.payload)
            except (psycopg.Error, OSError) as exc:
                if self.listening:
                    log.error("lost the connection that listens to the other members", error=str(exc).strip())
                self.listening = False
                await self._close(self._listening)
                self._listening = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT[1])

    def _dispatch(self, payload: str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            log.warning("ignored a message that is not JSON on the cluster channel")
            return
        if isinstance(message, dict):
            try:
                self._handler(message)
            except Exception:
                log.exception("a cluster message could not be handled", kind=message.get("k"))

    async def send(self, message: Mapping[str, Any]) -> None:
        """Send `message` to every member; raises psycopg.Error when it cannot be sent."""
        payload = json.dumps(message, separators=(",", ":"))
        async with self._send_lock:
            for attempt in (1, 2):
                try:
                    if self._sending is None:
                        self._sending = await self._connect()
                    await self._sending.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
                    return
                except (psycopg.Error, OSError):
                    await self._close(self._sending)
                    self._sending = None
                    if attempt == 2:
                        raise

    def post(self, message: Mapping[str, Any]) -> None:
        """Send `message` in the background; a failure is logged (what must arrive is sent again
        by whoever waits for its answer)."""
        task = asyncio.create_task(self._post(message))
        self._posts.add(task)
        task.add_done_callback(self._posts.discard)

    async def _post(self, message: Mapping[str, Any]) -> None:
        try:
            await self.send(message)
        except (psycopg.Error, OSError) as exc:
            log.warning("could not send to the other members", kind=message.get("k"), error=str(exc).strip())

    async def close(self) -> None:
        """Stop listening and close both connections."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.listening = False
        await self._close(self._listening)
        await self._close(self._sending)
        self._listening = self._sending = None

    @staticmethod
    async def _close(connection: psycopg.AsyncConnection[Any] | None) -> None:
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()
