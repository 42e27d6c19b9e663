"""One WatchImages stream: which changes it sends, when, and when it is refused or ended.

Runs on the server's event loop; imports asyncio and the domain. The gRPC adapter says what
a change becomes in a response for the stream's caller (Piece: an ImageEvent, encoded, or
None when the caller may not see it) and how a response is written (Render), and turns
each DomainError into its status.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
from collections.abc import AsyncGenerator, Callable, Collection, Hashable, Iterator, Sequence
from typing import Generic, TypeVar

from imageloc.server.domain.errors import DomainError, Reason
from imageloc.server.domain.model import Change
from imageloc.server.watch.feed import (
    READ_LIMIT,
    RING_SIZE,
    ChangeFeed,
    ReadChanges,
    StreamsClosedError,
)

#: The most events one response carries: a response stays far below gRPC's 4 MiB limit, and
#: a stream whose writes are held up by its caller holds at most this many.
MAX_BATCH = 100

#: A change as one piece of a response, in the adapter's form.
P = TypeVar("P")
#: A response as the adapter writes it.
R = TypeVar("R")

#: What a change becomes in the watcher's responses; None when the watcher may not see it
#: (its image as changed: the caller's access).
Piece = Callable[[Change], P | None]
#: A response: the pieces it carries, and the revision the stream has caught up to.
Render = Callable[[Sequence[P], int], R]


@dataclasses.dataclass
class _Selected(Generic[P]):
    """The pieces of the changes one viewer watching one set of ids is sent, by revision,
    for every change the feed holds up to `scanned`."""

    scanned: int
    revisions: list[int] = dataclasses.field(default_factory=list)
    pieces: list[P] = dataclasses.field(default_factory=list)
    streams: int = 0


class Selections(Generic[P, R]):
    """The responses of live streams, made once for every stream in the same place.

    The streams of one viewer watching the same ids share one selection, made as the feed
    reads changes: each change is judged, and made a piece, once for all of them, and a
    stream's response is its slice of the pieces. Streams at the same revision are sent
    the same response when the head moves: 100 watchers of one service cost one selection
    and one encoding, then 100 writes.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._selected: dict[tuple[frozenset[str], Hashable], _Selected[P]] = {}
        self._made: dict[tuple[int, int, frozenset[str], Hashable], tuple[R | None, int]] = {}

    @contextlib.contextmanager
    def watching(self, ids: frozenset[str], viewer: Hashable) -> Iterator[None]:
        """A stream of viewer's on ids is open in the block: their selection is kept."""
        key = (ids, viewer)
        selected = self._selected.setdefault(key, _Selected(scanned=-1))
        selected.streams += 1
        try:
            yield
        finally:
            selected.streams -= 1
            if not selected.streams:
                del self._selected[key]

    def live(
        self, feed: ChangeFeed, position: int, *, ids: frozenset[str], viewer: Hashable,
        piece: Piece[P], render: Render[P, R],
    ) -> tuple[R | None, int]:  # fmt: skip
        """The response for a stream at position (None: nothing it may see), and the
        revision it has then caught up to; position >= feed.oldest, inside watching(ids,
        viewer). piece and render are the viewer's: every stream of one viewer sees and
        gets the same."""
        key = (position, feed.head.revision, ids, viewer)
        try:
            return self._made[key]
        except KeyError:
            pass
        selected = self._selected[ids, viewer]
        _select(selected, feed, ids, piece)
        first = bisect.bisect_right(selected.revisions, position)
        pieces = selected.pieces[first : first + MAX_BATCH]
        if len(selected.pieces) - first > MAX_BATCH:  # a response stays small; the rest next
            caught_up_to = selected.revisions[first + MAX_BATCH - 1]
        else:
            caught_up_to = max(feed.head.revision, selected.scanned)
        made = (render(pieces, caught_up_to) if pieces else None), caught_up_to
        if len(self._made) >= self._size:
            self._made.clear()
        self._made[key] = made
        return made


def _select(selected: _Selected[P], feed: ChangeFeed, ids: frozenset[str], piece: Piece[P]) -> None:
    """Bring selected up to the feed's newest change (from its oldest, if it fell behind)."""
    if selected.scanned < feed.oldest:  # new, or the feed moved on without it: start afresh
        selected.scanned = feed.oldest
        selected.revisions.clear()
        selected.pieces.clear()
    changes = feed.since(selected.scanned)
    if not changes:
        return
    for revision, made in _pieces(changes, ids, piece):
        selected.revisions.append(revision)
        selected.pieces.append(made)
    selected.scanned = changes[-1].revision
    if len(selected.revisions) > 2 * RING_SIZE:  # forget what fell out of the feed
        kept = bisect.bisect_right(selected.revisions, feed.oldest)
        del selected.revisions[:kept], selected.pieces[:kept]


def _pieces(
    changes: Sequence[Change], ids: frozenset[str], piece: Piece[P]
) -> Iterator[tuple[int, P]]:
    """The revision and piece of each change the watcher is sent."""
    for change in changes:
        if not ids or change.image.id in ids:
            made = piece(change)
            if made is not None:
                yield change.revision, made


async def batches(
    feed: ChangeFeed,
    read: ReadChanges,
    selections: Selections[P, R],
    *,
    image_ids: Collection[str],
    start_revision: int,
    viewer: Hashable,
    piece: Piece[P],
    render: Render[P, R],
    progress_seconds: float,
) -> AsyncGenerator[R, None]:
    """The stream's responses, the first at once; DomainError for a refused start or a
    watcher that fell out of the feed's memory after it had caught up (WATCHER_TOO_SLOW);
    StreamsClosedError once the server stops.

    History older than the feed's memory is read from the store first (start_revision
    far back); once caught up the stream follows the feed. piece and render are the
    viewer's (every stream of one viewer sees the same changes, written the same way).
    """
    ids = frozenset(image_ids)
    # The feed keeps changes while streams are open, and selects them for each viewer's.
    with feed.following() as follower, selections.watching(ids, viewer):
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
        position = start_revision or head.revision
        live = position >= head.revision  # caught up: from now on it follows the feed
        clock = asyncio.get_running_loop().time
        # A progress response is due when the next tick would come too late for it.
        progress_due = max(0.0, progress_seconds - feed.tick_seconds)
        yield render((), position)
        follower.position = position  # once written: a stream held up by its caller lags
        sent_at = clock()
        while True:
            if feed.closed:
                raise StreamsClosedError("the server is stopping")
            if position >= feed.head.revision:
                live = True
                await feed.changed()
                if position >= feed.head.revision and clock() - sent_at >= progress_due:
                    yield render((), position)
                    sent_at = clock()
                continue
            response: R | None
            if position >= feed.oldest:
                response, position = selections.live(
                    feed, position, ids=ids, viewer=viewer, piece=piece, render=render
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
                pieces = [made for _, made in _pieces(changes, ids, piece)]
                response = render(pieces, position) if pieces else None
            if response is None and clock() - sent_at >= progress_due:
                response = render((), position)  # nothing it sees, for a while
            if response is not None:
                yield response
                sent_at = clock()
            follower.position = position
