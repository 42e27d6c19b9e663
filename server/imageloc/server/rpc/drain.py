"""Which calls the server still takes while it stops, and when the ones it took have ended.

Runs on the server's event loop; imports asyncio only. gRPC's own stop cancels every call
it holds unanswered, and every call that reaches it before the client has read its GOAWAY
(grpc/grpc#41785), so the server stops taking calls here first. It refuses new calls at
once while the admitted ones finish; then it holds new calls unanswered, which stops a
client waiting on one from sending more, starts gRPC's stop once nothing arrives, and
answers the held calls only after the GOAWAY is out.
"""

from __future__ import annotations

import asyncio
import time

#: How long no call may have arrived before gRPC's stop is started (see `Admission.settle`).
QUIET_SECONDS = 0.1
#: The longest calls are held waiting for that quiet, when some client never stops sending.
MOST_HELD_SECONDS = 1.0


class Admission:
    """Admits calls and counts those in flight; once closed, refuses new ones (the caller
    answers them UNAVAILABLE), at once until `settle` holds them until `release`."""

    def __init__(self) -> None:
        self._open = True
        self._in_flight = 0
        self._last_arrival = time.monotonic()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = asyncio.Event()
        self._holding = False
        self._released = asyncio.Event()

    async def enter(self) -> bool:
        """A call arrived: True when admitted (call `leave` when it ends), False when it
        is refused (once held calls are released, if they are being held)."""
        self._last_arrival = time.monotonic()
        if self._open:
            self._in_flight += 1
            self._idle.clear()
            return True
        if self._holding:
            await self._released.wait()
        return False

    def leave(self) -> None:
        """An admitted call ended."""
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    async def pass_through(self) -> None:
        """A call that is always answered (health) arrived: held like a refused one, but
        neither counted in flight nor refused."""
        self._last_arrival = time.monotonic()
        if self._holding:
            await self._released.wait()

    def close(self) -> None:
        """Admit no more calls; streams waiting on `closed` end."""
        self._open = False
        self._closed.set()

    async def closed(self) -> None:
        """Return once the server stopped admitting calls."""
        await self._closed.wait()

    async def drained(self) -> None:
        """Return once closed and no admitted call is in flight (streams end then)."""
        await self._closed.wait()
        await self._idle.wait()

    def release(self) -> None:
        """Answer the held calls, and every later one at once."""
        self._holding = False
        self._released.set()

    async def settle(self, *, deadline: float) -> bool:
        """Once closed: wait until no admitted call is in flight, then hold new calls
        until none arrived for QUIET_SECONDS (MOST_HELD_SECONDS at most).

        A call gRPC has read but not handed to a handler yet is invisible here: it is
        handed over within a loop turn once the loop is free, and then counts as an
        arrival. Held calls block their clients, so arrivals dry up. Gives up at
        `deadline` (time.monotonic()); whether every admitted call ended by then.
        """
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return False
        self._holding = True
        hold_until = min(deadline, time.monotonic() + MOST_HELD_SECONDS)
        while (since := time.monotonic() - self._last_arrival) < QUIET_SECONDS:
            left = hold_until - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(min(QUIET_SECONDS - since, left))
        return True
