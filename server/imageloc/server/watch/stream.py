"""One WatchImages stream: which changes it sends, when, and when it is refused or ended.

Runs on the server's event loop; imports asyncio and the domain. The gRPC adapter says how
a Batch is written (Selections' render: a WatchImagesResponse, encoded) and turns each
DomainError into its status.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, Callable, Collection, Hashable, Sequence
from typing import Generic, TypeVar

from imageloc.server.domain.errors import DomainError, Reason
from imageloc.server.domain.model import Change
from imageloc.server.watch.feed import READ_LIMIT, ChangeFeed, ReadChanges, StreamsClosedError

#: The most changes one response covers: a response stays far below gRPC's 4 MiB limit, and
#: a stream whose writes are held up by its caller holds at most this many changes.
MAX_BATCH = 100

#: Whether the watcher may see a change (its image as changed): the caller's access.
Visible = Callable[[Change], bool]

#: A response as the adapter writes it.
R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class Batch:
    """One response: the changes to send, and the revision the stream has caught up to."""

    changes: Sequence[Change]
    revision: int


#: How the adapter writes a batch.
Render = Callable[[Batch], R]


class Selections(Generic[R]):
    """The responses of live streams, made once for every stream in the same place.

    Streams at the same revision, watching the same ids as the same viewer, are sent the
    same response when the head moves: 100 watchers of one service cost one selection and
    one encoding, then 100 writes. The changes between two revisions never change, so a
    response is found again by those revisions, the ids and the viewer.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._made: dict[tuple[int, int, frozenset[str], Hashable], tuple[R | None, int]] = {}

    def live(
        self, feed: ChangeFeed, position: int, *, ids: frozenset[str], viewer: Hashable,
        visible: Visible, render: Render[R],
    ) -> tuple[R | None, int]:  # fmt: skip
        """The response for a stream at position (None: nothing it may see), and the
        revision it has then caught up to; position >= feed.oldest. visible and render
        are the viewer's: every stream of one viewer sees and gets the same."""
        key = (position, feed.head.revision, ids, viewer)
        try:
            return self._made[key]
        except KeyError:
            pass
        changes = feed.since(position)
        caught_up_to = max(feed.head.revision, changes[-1].revision if changes else 0)
        if len(changes) > MAX_BATCH:  # a response stays small; the rest comes next
            changes = changes[:MAX_BATCH]
            caught_up_to = changes[-1].revision
        made = _rendered(render, _selected(changes, ids, visible), caught_up_to), caught_up_to
        if len(self._made) >= self._size:
            self._made.clear()
        self._made[key] = made
        return made


def _rendered(render: Render[R], sent: Sequence[Change], revision: int) -> R | None:
    """The response of the changes sent (None when there are none)."""
    return render(Batch(sent, revision)) if sent else None


def _selected(changes: Sequence[Change], ids: frozenset[str], visible: Visible) -> list[Change]:
    return [c for c in changes if (not ids or c.image.id in ids) and visible(c)]


async def batches(
    feed: ChangeFeed,
    read: ReadChanges,
    selections: Selections[R],
    *,
    image_ids: Collection[str],
    start_revision: int,
    viewer: Hashable,
    visible: Visible,
    render: Render[R],
    progress_seconds: float,
) -> AsyncGenerator[R, None]:
    """The stream's responses, the first at once; DomainError for a refused start or a
    watcher that fell out of the feed's memory after it had caught up (WATCHER_TOO_SLOW);
    StreamsClosedError once the server stops.

    History older than the feed's memory is read from the store first (start_revision
    far back); once caught up the stream follows the feed. visible and render are the
    viewer's (every stream of one viewer sees the same changes, written the same way).
    """
    with feed.following():  # the feed keeps changes while streams are open
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
        clock = asyncio.get_running_loop().time
        # A progress response is due when the next tick would come too late for it.
        progress_due = max(0.0, progress_seconds - feed.tick_seconds)
        yield render(Batch((), position))
        sent_at = clock()
        while True:
            if feed.closed:
                raise StreamsClosedError("the server is stopping")
            if position >= feed.head.revision:
                live = True
                await feed.changed()
                if position >= feed.head.revision and clock() - sent_at >= progress_due:
                    yield render(Batch((), position))
                    sent_at = clock()
                continue
            response: R | None
            if position >= feed.oldest:
                response, position = selections.live(
                    feed, position, ids=ids, viewer=viewer, visible=visible, render=render
                )
            elif live:
                raise DomainError(
                    Reason.WATCHER_TOO_SLOW,
                    f"The stream fell more than the feed keeps behind, at revision {position}:"
                    " resume from it.",
                    metadata={"revision": str(position)},
                )
            else:
                changes, _ = await read(position, READ_LIMIT)
                changes = changes[:MAX_BATCH]
                caught_up_to = changes[-1].revision if changes else feed.oldest
                position = max(position, caught_up_to)
                response = _rendered(render, _selected(changes, ids, visible), position)
            if response is None and clock() - sent_at >= progress_due:
                response = render(Batch((), position))  # nothing it sees, for a while
            if response is not None:
                yield response
                sent_at = clock()
