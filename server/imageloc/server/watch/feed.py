"""One process's view of the change log: it follows the store's revisions and keeps the newest.

Runs on the server's event loop; imports asyncio and the domain. It reads the log through
a callable (the service's read, run the way the server runs store calls), woken by this
process's own writes (at most every batch_seconds), by `wakeups` (PostgreSQL's NOTIFY from
every replica) and every poll_seconds whatever happens. Streams wait on one event, set when
the head moves and every tick_seconds (so an idle stream can send its progress): no timer
or task per waiting stream.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence

from imageloc.server.domain.model import Change
from imageloc.server.domain.ports import StoreHead, StoreUnavailableError

log = logging.getLogger(__name__)

#: Reads up to `limit` changes above a revision, and the store's head, in one snapshot.
ReadChanges = Callable[[int, int], Awaitable[tuple[Sequence[Change], StoreHead]]]

#: Runs until cancelled, calling its argument whenever another replica may have committed a
#: change (PostgreSQL's LISTEN: store/notifications.py).
Wakeups = Callable[[Callable[[], None]], Awaitable[None]]

#: Changes read from the store at a time.
READ_LIMIT = 1000
#: The newest changes kept in memory for live watchers; one further behind is too slow.
RING_SIZE = 10_000
#: Under a stream of writes the feed reads, and its streams respond, at most once a batch
#: window (a change after a quiet spell goes out at once). The window is batch_seconds
#: while the loop has time to spare. As the loop's busy share (smoothed over BUSY_SECONDS)
#: climbs from CALM_SHARE to 1, the window grows to this much per stream that waited, up
#: to MAX_BATCH_SECONDS. A response costs the loop (gRPC's write, the stream's wake-up)
#: about 85 us here, 40% of an empty unary call: a saturated loop then spends about a
#: tenth of its time on responses (1,250 a second), and its calls keep 0.8 of their rate
#: beside 100 watchers; one with time to spare keeps the latency low instead.
BATCH_SECONDS_PER_STREAM = 0.0008
MAX_BATCH_SECONDS = 0.1
BUSY_SECONDS = 0.5
CALM_SHARE = 0.75


class StreamsClosedError(Exception):
    """The server is stopping: every stream ends (UNAVAILABLE, and its client resumes)."""


class Follower:
    """One open stream, as the feed sees it: the revision it has sent up to."""

    __slots__ = ("position",)

    def __init__(self, position: int) -> None:
        self.position = position


class ChangeFeed:
    """The newest RING_SIZE changes, and the store revision this process has caught up to.

    Revisions commit in order (the store takes them under one lock), so everything up to
    the head a snapshot shows is in the log: the feed never skips one.
    """

    def __init__(
        self,
        read: ReadChanges,
        *,
        poll_seconds: float = 0.02,
        batch_seconds: float = 0.02,
        tick_seconds: float = 1.0,
        wakeups: Wakeups | None = None,
        loop_idle: Callable[[], float] | None = None,
    ) -> None:
        self._read = read
        self._wakeups = wakeups
        self._poll_seconds = poll_seconds
        self._batch_seconds = batch_seconds
        self._loop_idle = loop_idle  # how long the loop has waited for work, all told
        # When the last window began, and loop_idle() then (None: before the first one).
        self._idle_seen: tuple[float, float] | None = None
        self._busy: float | None = None  # the loop's busy share, smoothed (from its first)
        self._streams = 0  # streams open (follow)
        self._followers: set[Follower] = set()  # their positions
        self._waiting = 0  # streams waiting in changed()
        self._released = 0  # how many the last release woke
        self.tick_seconds = tick_seconds
        self._ring: collections.deque[Change] = collections.deque(maxlen=RING_SIZE)
        self.head = StoreHead(revision=0, compact_revision=0)
        self._wake = asyncio.Event()
        self._advanced = asyncio.Event()
        self._ready = asyncio.Event()
        self._closed = False
        self._reading = asyncio.Lock()  # one catch-up at a time: the ring gets each change once
        self._tasks: list[asyncio.Future[None]] = []

    def start(self) -> None:
        """Begin following the log (on the running loop), and listening for wake-ups."""
        self._tasks.append(asyncio.ensure_future(self._follow()))
        self._tasks.append(asyncio.ensure_future(self._tick()))
        if self._wakeups is not None:
            self._tasks.append(asyncio.ensure_future(self._wakeups(self.wake)))

    async def stop(self) -> None:
        """Stop following the log."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def close_streams(self) -> None:
        """End every stream: the server stops (its calls in flight have been answered)."""
        self._closed = True
        self._release()

    @property
    def closed(self) -> bool:
        """Whether streams must end (close_streams)."""
        return self._closed

    def wake(self) -> None:
        """Read the log now: this process has committed a change."""
        self._wake.set()

    async def ready(self) -> None:
        """Return once the feed has read the store's head once."""
        await self._ready.wait()

    async def refresh(self) -> None:
        """Catch up with the store now: a watcher starts from now, or names a revision
        newer than the head (another replica committed it a moment ago)."""
        await self._catch_up()

    @property
    def oldest(self) -> int:
        """The revision below the oldest change held: changes above it are in memory."""
        if not self._ring:
            return self.head.revision
        return self._ring[0].revision - 1

    def since(self, revision: int) -> list[Change]:
        """The changes held above revision (revision >= oldest)."""
        ring = self._ring
        if not ring or revision >= ring[-1].revision:
            return []
        # Streams ask for the newest few: count them from the right end (a deque walks to
        # an index, so slicing from the left would cost the whole ring).
        count = ring[-1].revision - revision
        if count <= len(ring) and ring[-count].revision == revision + 1:  # revisions are dense
            newest = list(itertools.islice(reversed(ring), count))
            newest.reverse()
            return newest
        return [change for change in ring if change.revision > revision]

    @contextlib.contextmanager
    def following(self) -> Iterator[Follower]:
        """Count a stream open while in the block: with none open, the feed reads only
        the head and keeps no changes (a stream that opens later reads what it missed
        from the store, as one from further back does). The stream keeps the revision it
        has sent up to in the Follower (lag reads them)."""
        follower = Follower(self.head.revision)
        self._streams += 1
        self._followers.add(follower)
        try:
            yield follower
        finally:
            self._streams -= 1
            self._followers.discard(follower)

    @property
    def streams(self) -> int:
        """How many streams are open."""
        return self._streams

    def lag(self) -> int:
        """How many revisions the slowest open stream is behind the head (0 with none)."""
        followers = tuple(self._followers)  # read from the metrics' thread too
        if not followers:
            return 0
        return max(0, self.head.revision - min(f.position for f in followers))

    async def changed(self) -> None:
        """Return once the head moves on, the streams must end, or a tick has passed."""
        self._waiting += 1
        try:
            await self._advanced.wait()
        finally:
            self._waiting -= 1

    def _release(self) -> None:
        """Wake every waiting stream (changed)."""
        advanced, self._advanced = self._advanced, asyncio.Event()
        self._released = self._waiting
        advanced.set()

    def _next_window(self) -> float:
        """How long the feed waits after this read before the next (BATCH_SECONDS_PER_STREAM
        says how it is chosen); the loop's busy share is measured from now."""
        if self._loop_idle is None:
            return self._batch_seconds
        now, idle = time.monotonic(), self._loop_idle()
        seen, self._idle_seen = self._idle_seen, (now, idle)
        if seen is not None and now > seen[0]:
            elapsed = now - seen[0]
            share = max(0.0, 1.0 - (idle - seen[1]) / elapsed)
            busy = share if self._busy is None else self._busy  # the first share seeds it
            self._busy = busy + (share - busy) * min(1.0, elapsed / BUSY_SECONDS)
        if self._busy is None:  # nothing measured yet: the loop is taken to have time to spare
            return self._batch_seconds
        ramp = min(1.0, max(0.0, (self._busy - CALM_SHARE) / (1.0 - CALM_SHARE)))
        spread = min(self._released * BATCH_SECONDS_PER_STREAM, MAX_BATCH_SECONDS)
        return self._batch_seconds + ramp * max(0.0, spread - self._batch_seconds)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick_seconds)
            self._release()

    async def _follow(self) -> None:
        while True:
            try:
                await self._catch_up()
            except StoreUnavailableError as error:
                log.warning("change feed: store unavailable: %s", error)
            except Exception:
                log.exception("change feed: unexpected error")
            # Under a stream of writes, one read (and one response per watcher) covers
            # a batch window of them, instead of one per write.
            await asyncio.sleep(self._next_window())
            await _wait(self._wake, self._poll_seconds)
            self._wake.clear()

    async def _catch_up(self) -> None:
        async with self._reading:
            await self._read_to_head()

    async def _read_to_head(self) -> None:
        while True:
            limit = READ_LIMIT if self._streams else 0
            changes, head = await self._read(self.head.revision, limit)
            if limit:
                self._ring.extend(changes)
            elif self._streams:  # one opened meanwhile at the old head: read its changes
                continue
            else:
                self._ring.clear()
            newest = changes[-1].revision if len(changes) == READ_LIMIT else head.revision
            moved = (
                newest > self.head.revision or head.compact_revision != self.head.compact_revision
            )
            self.head = StoreHead(
                revision=max(newest, self.head.revision), compact_revision=head.compact_revision
            )
            self._ready.set()
            if moved:
                self._release()
            if len(changes) < READ_LIMIT:
                return


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    """Wait for event, timeout seconds at most; False on timeout.

    Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that arrives as the
    event is set (gh-86296), which would leave a stopping feed, or a stream whose caller
    left, running forever.
    """
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()
    return bool(done)
