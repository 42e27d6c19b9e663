"""An asyncio event loop on a thread of its own, driven from plain blocking code.

The server runs on grpc.aio; this lets `imageloc serve`, the tests and the benchmark
start and stop it like any object. Standard library only.
"""

from __future__ import annotations

import asyncio
import selectors
import threading
import time
from collections.abc import Coroutine
from concurrent import futures
from typing import Any, TypeVar

T = TypeVar("T")


class _IdleTimedSelector(selectors.DefaultSelector):
    """The platform's selector, counting the time the loop spends waiting in it."""

    idle_seconds = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        started = time.monotonic()
        try:
            return super().select(timeout)
        finally:
            self.idle_seconds += time.monotonic() - started


class LoopThread:
    """A running event loop on a daemon thread until close()."""

    def __init__(self, name: str) -> None:
        self._selector = _IdleTimedSelector()
        self._loop = asyncio.SelectorEventLoop(self._selector)
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def idle_seconds(self) -> float:
        """How long the loop has waited for something to do, all told: the rest of its
        time it was busy (the change feed batches more while the loop is busy)."""
        return self._selector.idle_seconds

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run coroutine on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def settle(self, coroutine: Coroutine[Any, Any, Any], timeout: float) -> None:
        """Run coroutine on the loop and wait up to timeout for it; a closed loop drops it.

        For callers that must not fail when the server is stopping (health reports).
        """
        try:
            done = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            coroutine.close()
            return
        futures.wait([done], timeout=timeout)

    def close(self) -> None:
        """Stop the loop and wait for its thread."""
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
