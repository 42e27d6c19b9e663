"""One WatchImages stream: which changes it sends, when, and when it is refused or ended.

Runs on the server's event loop; imports asyncio and the domain. The gRPC adapter turns
each Batch into a WatchImagesResponse and each DomainError into its status.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, Callable, Collection, Sequence

from imageloc.server.domain.errors import DomainError, Reason
from imageloc.server.domain.model import Change
from imageloc.server.watch.feed import READ_LIMIT, ChangeFeed, ReadChanges, StreamsClosedError

#: The most changes one response covers: a response stays far below gRPC's 4 MiB limit, and
#: a stream whose writes are held up by its caller holds at most this many changes.
MAX_BATCH = 100

#: Whether the watcher may see a change (its image as changed): the caller's access.
Visible = Callable[[Change], bool]


@dataclasses.dataclass(frozen=True)
class Batch:
    """One response: the changes to send, and the revision the stream has caught up to."""

    changes: Sequence[Change]
    revision: int


async def batches(
    feed: ChangeFeed,
    read: ReadChanges,
    *,
    image_ids: Collection[str],
    start_revision: int,
    visible: Visible,
    progress_seconds: float,
) -> AsyncGenerator[Batch, None]:
    """The stream's batches, the first at once; DomainError for a refused start or a
    watcher that fell out of the feed's memory after it had caught up (WATCHER_TOO_SLOW);
    StreamsClosedError once the server stops.

    History older than the feed's memory is read from the store first (start_revision
    far back); once caught up the stream follows the feed.
    """
    await feed.ready()
    if start_revision == 0 or start_revision > feed.head.revision:
        # "From now" is the store's now, not the feed's last read; and a newer revision
        # may have been committed a moment ago, on this replica or another.
        await feed.refresh()
    head = feed.head
    if start_revision < 0:
        raise DomainError(
            Reason.INVALID_REQUEST,
            f"start_revision must not be negative, not {start_revision}",
            field="start_revision",
        )
    if start_revision > head.revision:
        raise DomainError(
            Reason.FUTURE_REVISION,
            f"start_revision {start_revision} is after the store's revision {head.revision}",
            field="start_revision",
            metadata={"revision": str(head.revision)},
        )
    if start_revision and start_revision < head.compact_revision:
        raise DomainError(
            Reason.REVISION_COMPACTED,
            f"The changes after revision {start_revision} are no longer kept: list again,"
            f" then watch from the listing's revision (at least {head.compact_revision}).",
            field="start_revision",
            metadata={"compactRevision": str(head.compact_revision)},
        )
    ids = frozenset(image_ids)
    position = start_revision or head.revision
    live = position >= head.revision  # caught up: from now on it follows the feed
    yield Batch((), position)
    while True:
        if feed.closed:
            raise StreamsClosedError("the server is stopping")
        if position >= feed.head.revision:
            live = True
            if not await feed.advanced(progress_seconds) and position >= feed.head.revision:
                yield Batch((), position)
            continue
        if position >= feed.oldest:
            changes: Sequence[Change] = feed.since(position)
            caught_up_to = max(feed.head.revision, changes[-1].revision if changes else 0)
        elif live:
            raise DomainError(
                Reason.WATCHER_TOO_SLOW,
                f"The stream fell more than the feed keeps behind, at revision {position}:"
                " resume from it.",
                metadata={"revision": str(position)},
            )
        else:
            changes, _ = await read(position, READ_LIMIT)
            caught_up_to = changes[-1].revision if changes else feed.oldest
        if len(changes) > MAX_BATCH:  # a response stays small; the rest comes next
            changes = changes[:MAX_BATCH]
            caught_up_to = changes[-1].revision
        sent = [c for c in changes if (not ids or c.image.id in ids) and visible(c)]
        position = max(position, caught_up_to)
        if sent:
            yield Batch(sent, position)
