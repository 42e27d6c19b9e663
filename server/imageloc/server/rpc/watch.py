"""WatchImages over gRPC: authorize the stream, then write the change feed's batches to it.

Runs on the server's event loop; the stream logic is watch.stream's, the authentication
and authorization the servicer's (serve), the conversions rpc.convert's.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, NamedTuple

import grpc

from imageloc.server.domain.access import CallerAccess
from imageloc.server.domain.errors import DomainError, Reason
from imageloc.server.domain.model import Change, ChangeType
from imageloc.server.rpc import convert
from imageloc.server.rpc.drain import Admission
from imageloc.server.rpc.servicer import (
    SERVICE,
    STOPPING,
    ImageServicer,
    Refused,
    abort_async,
    code_name,
    refusal_status,
    report_refusal,
)
from imageloc.server.watch.feed import ChangeFeed, ReadChanges, StreamsClosedError
from imageloc.server.watch.stream import Selections, batches
from imageloc.v1 import image_service_pb2 as pb

_EVENT_TYPES = {
    ChangeType.CREATED: pb.IMAGE_EVENT_TYPE_CREATED,
    ChangeType.UPDATED: pb.IMAGE_EVENT_TYPE_UPDATED,
    ChangeType.DELETED: pb.IMAGE_EVENT_TYPE_DELETED,
}


def watch_handler(
    servicer: ImageServicer,
    feed: ChangeFeed,
    read: ReadChanges,
    admission: Admission,
    *,
    progress_seconds: float,
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]:
    """The WatchImages handler: a stream open until the caller ends it or the server stops.

    read reads the change log (history older than the feed holds). A stream is not
    counted among the calls a stop waits for: once those have finished, the stop closes
    the feed's streams (feed.close_streams) and every one ends UNAVAILABLE
    (SERVER_SHUTTING_DOWN), so its client resumes elsewhere.
    """

    views = SharedViews()
    selections: Selections[bytes, Batch] = Selections()
    metrics = servicer.metrics
    observed = metrics.rpc(SERVICE.full_name, "WatchImages", streaming=True)

    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        observed.started()
        observed.received()
        began = time.perf_counter()
        ending = _Ending()
        try:
            await stream(request, context, ending)
        except asyncio.CancelledError:
            ending.code = "CANCELLED"
            raise
        finally:
            observed.handled(ending.code, time.perf_counter() - began)

    async def stream(
        request: Any, context: grpc.aio.ServicerContext[Any, Any], ending: _Ending
    ) -> None:
        await admission.pass_through()
        try:
            watch = servicer.serve(ImageServicer.prepare_watch, request, context, rpc="WatchImages")
        except Refused as refused:
            await _abort(context, refused.status, ending)
            return
        access = watch.call.access
        responses = batches(
            feed,
            read,
            selections,
            image_ids=watch.image_ids,
            start_revision=watch.start_revision,
            viewer=access.identity,
            piece=functools.partial(views.of, access=access),
            render=_response,
            progress_seconds=progress_seconds,
        )
        try:
            async for response in responses:
                await context.write(response.data)
                observed.sent()
                metrics.watch_sent(response.events)
        except StreamsClosedError:
            await _abort(context, STOPPING, ending)
        except DomainError as error:
            status = refusal_status(error, "WatchImages")
            report_refusal(metrics, status, "WatchImages")
            if error.reason is Reason.WATCHER_TOO_SLOW:
                metrics.watch_too_slow()
            await _abort(context, status, ending)
        finally:  # the caller went away, the stream was refused or the server stops
            await responses.aclose()

    handle.__name__ = "WatchImages"
    return handle


class SharedViews:
    """Each change as each caller may see it, decided and encoded once for all its streams:
    an ImageEvent, encoded as one of a WatchImagesResponse's events.

    Whether a caller sees a change and its locations depends on the change and on who the
    caller is (CallerAccess.identity), so the streams of one identity share the work: a
    change sent to 100 watchers of one service is judged and converted once.
    """

    def __init__(self, size: int = 50_000) -> None:
        self._size = size
        self._views: dict[tuple[int, Hashable], bytes | None] = {}
        self._encoded: dict[tuple[int, bool], bytes] = {}

    def of(self, change: Change, *, access: CallerAccess) -> bytes | None:
        """change as an event of a response to this caller; None when it may not see it."""
        key = (change.revision, access.identity)
        try:
            return self._views[key]
        except KeyError:
            pass
        if len(self._views) >= self._size:
            self._views.clear()
            self._encoded.clear()
        view = None
        if access.may_see(change.image):
            shown = access.sees_locations(change.image)
            view = self._encoded.get((change.revision, shown))
            if view is None:
                event = _event(change, shown).SerializeToString()
                view = b"".join((_EVENTS_TAG, _varint(len(event)), event))
                self._encoded[(change.revision, shown)] = view
        self._views[key] = view
        return view


class Batch(NamedTuple):
    """A WatchImagesResponse, encoded, and how many events it carries."""

    data: bytes
    events: int


def _response(events: Sequence[bytes], revision: int) -> Batch:
    """The WatchImagesResponse of events (SharedViews.of's) at revision, encoded."""
    if not revision:
        return Batch(b"".join(events), len(events))
    return Batch(b"".join((*events, _REVISION_TAG, _varint(revision))), len(events))


# WatchImagesResponse's wire format: events = 1 (length-delimited), revision = 2 (varint).
_EVENTS_TAG = bytes([(1 << 3) | 2])
_REVISION_TAG = bytes([(2 << 3) | 0])


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _event(change: Change, locations_shown: bool) -> pb.ImageEvent:
    return pb.ImageEvent(
        revision=change.revision,
        type=_EVENT_TYPES[change.type],
        image=convert.image_to_proto(change.image, locations_shown=locations_shown),
        commit_time=convert.timestamp(change.commit_time),
    )


class _Ending:
    """How a stream ended, for its metrics: the name of its status code."""

    code = "OK"


async def _abort(context: grpc.aio.ServicerContext[Any, Any], status: Any, ending: _Ending) -> None:
    """End the stream with status, unless the caller has gone already."""
    if context.cancelled() or context.done():
        ending.code = "CANCELLED"
        return
    ending.code = code_name(status)
    await abort_async(context, status)
