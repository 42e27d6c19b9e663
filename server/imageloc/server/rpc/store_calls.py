"""How the asyncio server runs a handler's store work: inline on the loop (SQLite), or in a
greenlet on the loop (PostgreSQL).

Imports asyncio, SQLAlchemy's greenlet bridge and the domain's ports.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from sqlalchemy.util import greenlet_spawn

from imageloc.server.domain.ports import StoreBusyError

T = TypeVar("T")

#: The first pause before trying a busy store again, and the longest one.
FIRST_RETRY_SECONDS = 0.0005
MAX_RETRY_SECONDS = 0.02


class StoreCalls(Protocol):
    """Runs blocking store work for a coroutine."""

    async def run(self, call: Callable[[], T]) -> T:
        """call's result (or its exception), without blocking the event loop for long."""
        ...


class InlineCalls:
    """Runs each call on the event loop; a StoreBusyError is tried again after a pause.

    For SQLite, which answers in microseconds: no thread hand-off, and a lock held by
    another writer is waited for with asyncio.sleep, never by blocking the loop.

    The call itself ends with DeadlineExceededError once its deadline passes; without a
    deadline, a store busy for longer than max_wait_seconds answers StoreBusyError.
    Whatever the call answers, it is answered once `durable` says its writes are
    committed: a refusal may have been decided on them too.
    """

    def __init__(
        self,
        *,
        max_wait_seconds: float,
        durable: Callable[[], Awaitable[None]],
        on_wait: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self._max_wait = max_wait_seconds
        self._durable = durable
        self._on_wait = on_wait  # told how long each call that waited for the lock waited

    async def run(self, call: Callable[[], T]) -> T:
        try:
            outcome = call()
        except StoreBusyError as busy:
            return await self._run_waiting(call, busy)
        except Exception:
            await self._durable()
            raise
        await self._durable()
        return outcome

    async def _run_waiting(self, call: Callable[[], T], busy: StoreBusyError) -> T:
        """call, tried again after growing pauses while another process holds the lock;
        the last StoreBusyError once max_wait_seconds would pass."""
        pause = FIRST_RETRY_SECONDS
        began = time.monotonic()
        give_up = began + self._max_wait
        try:
            while time.monotonic() + pause <= give_up:
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_RETRY_SECONDS)
                try:
                    outcome = call()
                except StoreBusyError as again:
                    busy = again
                    continue
                except Exception:
                    await self._durable()
                    raise
                await self._durable()
                return outcome
            raise busy
        finally:
            self._on_wait(time.monotonic() - began)


class LoopCalls:
    """Runs each call in a greenlet on the event loop; its statements await there.

    For PostgreSQL on psycopg's AsyncConnection (store/driver.py's LoopDriver): the
    blocking-style store code suspends at each round trip and the loop serves other calls
    meanwhile, with no thread hand-off and no thread contending for the GIL.
    """

    async def run(self, call: Callable[[], T]) -> T:
        result: T = await greenlet_spawn(call)
        return result
