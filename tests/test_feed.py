"""The change feed and a stream's batches, on a fake change log: ring, head, stop."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from collections.abc import AsyncGenerator, Sequence

import pytest

from imageloc.server.domain.errors import DomainError
from imageloc.server.domain.model import Change, ChangeType, Image, ImageStatus
from imageloc.server.domain.ports import StoreHead
from imageloc.server.watch import feed as feed_module
from imageloc.server.watch.feed import ChangeFeed
from imageloc.server.watch.stream import MAX_BATCH, Selections, batches

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


@dataclasses.dataclass(frozen=True)
class Batch:
    """A response as these tests render it: its changes, and the stream's revision."""

    changes: Sequence[Change]
    revision: int


class Log:
    """A change log in memory."""

    def __init__(self) -> None:
        self.changes: list[Change] = []

    def commit(self, image_id: str = "i") -> None:
        image = Image(
            id=image_id, name="x", status=ImageStatus.QUEUED, created_at=T0, updated_at=T0
        )
        revision = len(self.changes) + 1
        self.changes.append(Change(revision, ChangeType.UPDATED, image, T0))

    async def read(self, after: int, limit: int) -> tuple[Sequence[Change], StoreHead]:
        await asyncio.sleep(0)
        found = [c for c in self.changes if c.revision > after][:limit]
        return found, StoreHead(revision=len(self.changes), compact_revision=0)


def test_stopping_a_feed_that_is_woken_all_the_time_ends_it() -> None:
    # On Python 3.11 asyncio.wait_for swallowed the stop's cancellation when a wake-up
    # arrived with it, and the feed ran on forever (the server's stop hung).
    async def scenario() -> None:
        log = Log()
        for _ in range(50):
            feed = ChangeFeed(log.read, poll_seconds=0.001, batch_seconds=0)
            feed.start()
            for _ in range(20):
                feed.wake()
                await asyncio.sleep(0)
            await asyncio.wait_for(feed.stop(), 2)

    asyncio.run(scenario())


def test_the_feed_keeps_the_newest_changes_and_the_head() -> None:
    async def scenario() -> None:
        log = Log()
        for _ in range(5):
            log.commit()
        feed = ChangeFeed(log.read, poll_seconds=0.001, batch_seconds=0)
        with feed.following():  # a stream is open
            feed.start()
            await feed.ready()
            assert feed.head.revision == 5
            assert [c.revision for c in feed.since(2)] == [3, 4, 5]
            log.commit()
            feed.wake()
            await asyncio.wait_for(feed.changed(), 2)
            assert feed.head.revision == 6
        # With no stream open the feed follows the head only, and keeps no changes.
        log.commit()
        feed.wake()
        await asyncio.wait_for(feed.changed(), 2)
        assert (feed.head.revision, feed.since(2), feed.oldest) == (7, [], 7)
        await feed.stop()

    asyncio.run(scenario())


def test_a_live_stream_that_falls_out_of_the_ring_is_too_slow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(feed_module, "RING_SIZE", 4)

    async def scenario() -> None:
        log = Log()
        feed = ChangeFeed(log.read, poll_seconds=0.001, batch_seconds=0)
        feed.start()
        stream = batches(
            feed, log.read, Selections(), image_ids=(), start_revision=0, viewer="v",
            piece=lambda c: c, render=Batch, progress_seconds=5,
        )  # fmt: skip
        first: Batch = await anext(stream)
        assert first.revision == 0
        for _ in range(10):  # the stream reads nothing meanwhile
            log.commit()
        await feed.refresh()
        with pytest.raises(DomainError) as slow:
            await anext(stream)
        assert slow.value.reason == "WATCHER_TOO_SLOW"
        assert slow.value.metadata == {"revision": "0"}
        await stream.aclose()
        # From history a stream reads the log itself, however far back.
        history = batches(
            feed, log.read, Selections(), image_ids=(), start_revision=1, viewer="v",
            piece=lambda c: c, render=Batch, progress_seconds=5,
        )  # fmt: skip
        assert (await anext(history)).revision == 1
        got = (await anext(history)).changes
        assert [c.revision for c in got] == list(range(2, 11))
        await history.aclose()
        await feed.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize("busy", [False, True])
def test_the_batch_window_grows_only_while_the_loop_is_busy(busy: bool) -> None:
    # A busy loop (its selector never idle) with 100 streams waiting: the feed reads, and
    # its streams respond, at most once every 80 ms. A loop with time to spare: every 10 ms.
    reads = asyncio.run(_reads_under_writes(busy=busy, changes=100))  # over half a second
    if busy:
        assert reads <= 12  # 0.5 s / 80 ms, and the first read at once
    else:
        assert reads >= 20  # about 0.5 s / (10 ms + a read)


def test_a_loop_with_time_to_spare_batches_little_from_its_start() -> None:
    # The busy share was first measured over the time since the machine booted, as if the
    # loop had been busy all along: the windows of a new server's first moments were long.
    reads = asyncio.run(_reads_under_writes(busy=False, changes=20))  # over 100 ms
    assert reads >= 5  # about 100 ms / (10 ms + a read)


async def _reads_under_writes(*, busy: bool, changes: int) -> int:
    """How often a new feed (batch_seconds 0.01) with 100 streams reads while a change
    commits every 5 ms; its loop never waits (busy), or always."""
    log = Log()
    reads = 0

    async def read(after: int, limit: int) -> tuple[Sequence[Change], StoreHead]:
        nonlocal reads
        reads += 1
        return await log.read(after, limit)

    clock = asyncio.get_running_loop().time
    started = clock()

    def loop_idle() -> float:
        return 0.0 if busy else clock() - started

    feed = ChangeFeed(read, poll_seconds=1.0, batch_seconds=0.01, loop_idle=loop_idle)
    waiting = [asyncio.ensure_future(_follow(feed)) for _ in range(100)]
    feed.start()
    await feed.ready()
    reads = 0
    for _ in range(changes):
        log.commit()
        feed.wake()
        await asyncio.sleep(0.005)
    counted = reads
    for task in waiting:
        task.cancel()
    await feed.stop()
    return counted


async def _follow(feed: ChangeFeed) -> None:
    """A stream that only waits for the head to move, again and again."""
    with feed.following():
        while True:
            await feed.changed()


def test_a_stream_that_opens_while_the_feed_reads_only_the_head_gets_every_change() -> None:
    # With no stream open the feed reads only the head. One that opened during such a read,
    # at the old head, was then behind a feed that held none of its changes: it was ended
    # WATCHER_TOO_SLOW at once.
    async def scenario() -> None:
        log = Log()
        gate = asyncio.Event()
        gate.set()

        async def read(after: int, limit: int) -> tuple[Sequence[Change], StoreHead]:
            await gate.wait()
            return await log.read(after, limit)

        for _ in range(2):
            log.commit()
        feed = ChangeFeed(read, poll_seconds=0.001, batch_seconds=0)
        feed.start()
        await feed.ready()
        gate.clear()
        for _ in range(3):
            log.commit()
        feed.wake()
        await asyncio.sleep(0.01)  # the feed's read of the head waits at the gate
        stream = batches(
            feed, read, Selections(), image_ids=(), start_revision=2, viewer="v",
            piece=lambda c: c, render=Batch, progress_seconds=5,
        )  # fmt: skip
        first: Batch = await anext(stream)
        assert first.revision == 2
        gate.set()
        second: Batch = await asyncio.wait_for(anext(stream), 2)
        assert [c.revision for c in second.changes] == [3, 4, 5]
        await stream.aclose()
        await feed.stop()

    asyncio.run(scenario())


def test_streams_of_one_viewer_share_a_selection_and_each_gets_its_own_changes() -> None:
    # One stream on every image, one on image "b" only, one that opens later on "b": the
    # selection of "b" is judged once for both of its streams. Each gets its changes in
    # order, at most MAX_BATCH a response, with the revision it has caught up to; the one
    # on "b" catches up to the head past the changes of "a" it is not sent.
    async def scenario() -> None:
        log = Log()
        feed = ChangeFeed(log.read, poll_seconds=0.001, batch_seconds=0)
        feed.start()
        judged: list[int] = []

        def piece(change: Change) -> Change:
            judged.append(change.revision)
            return change

        selections: Selections[Change, Batch] = Selections()

        def stream(ids: tuple[str, ...]) -> AsyncGenerator[Batch, None]:
            return batches(
                feed, log.read, selections, image_ids=ids, start_revision=0, viewer="v",
                piece=piece, render=Batch, progress_seconds=5,
            )  # fmt: skip

        every, only_b = stream(()), stream(("b",))
        assert (await anext(every)).revision == 0
        assert (await anext(only_b)).revision == 0
        for index in range(2 * MAX_BATCH + 50):
            log.commit("b" if index % 2 else "a")
        for _ in range(20):
            log.commit("a")
        await feed.refresh()
        got_every = [await anext(every) for _ in range(3)]
        assert [len(b.changes) for b in got_every] == [MAX_BATCH, MAX_BATCH, 70]
        assert [b.revision for b in got_every] == [MAX_BATCH, 2 * MAX_BATCH, 270]
        got_b = await anext(only_b)
        assert [c.revision for c in got_b.changes] == list(range(2, 2 * MAX_BATCH + 1, 2))
        assert got_b.revision == 2 * MAX_BATCH
        last_b = await anext(only_b)
        assert [c.revision for c in last_b.changes] == list(range(202, 251, 2))
        assert last_b.revision == 270  # the head, past the changes of "a"
        later_b = stream(("b",))
        assert (await anext(later_b)).revision == 270
        log.commit("b")
        await feed.refresh()
        assert [c.revision for c in (await anext(only_b)).changes] == [271]
        assert [c.revision for c in (await anext(later_b)).changes] == [271]
        # Each change judged once for the stream on every image (which has not read 271
        # yet), once for the two on "b".
        assert sorted(judged) == sorted([*range(1, 271), *range(2, 251, 2), 271])
        for opened in (every, only_b, later_b):
            await opened.aclose()
        await feed.stop()

    asyncio.run(scenario())
