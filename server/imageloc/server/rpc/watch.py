"""WatchImages over gRPC: authorize the stream, then write the change feed's batches to it.

Runs on the server's event loop; the stream logic is watch.stream's, the authentication
and authorization the servicer's (serve), the conversions rpc.convert's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_status import rpc_status

from imageloc.server.domain.errors import DomainError
from imageloc.server.domain.model import Change, ChangeType
from imageloc.server.rpc import convert
from imageloc.server.rpc.drain import Admission
from imageloc.server.rpc.servicer import STOPPING, Call, ImageServicer, Refused, refusal_status
from imageloc.server.watch.feed import ChangeFeed, ReadChanges
from imageloc.server.watch.stream import Batch, batches
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

    read reads the change log (history older than the feed holds). It is not counted
    among the calls a stop waits for: once those have finished, every
    stream ends UNAVAILABLE (SERVER_SHUTTING_DOWN), so its client resumes elsewhere.
    """

    events = EncodedEvents()

    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await admission.pass_through()
        try:
            watch = servicer.serve(ImageServicer.prepare_watch, request, context, rpc="WatchImages")
        except Refused as refused:
            await _abort(context, refused.status)
            return
        stream = batches(
            feed,
            read,
            image_ids=watch.image_ids,
            start_revision=watch.start_revision,
            visible=lambda change: watch.call.access.may_see(change.image),
            progress_seconds=progress_seconds,
        )
        stopping = asyncio.ensure_future(admission.drained())
        following: asyncio.Future[Batch] | None = None
        try:
            while True:
                following = asyncio.ensure_future(anext(stream))
                await asyncio.wait({following, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    await _cancel(following)
                    await _abort(context, STOPPING)
                    return
                try:
                    batch = following.result()
                except DomainError as error:
                    await _abort(context, refusal_status(error, "WatchImages"))
                    return
                await context.write(_response(batch, watch.call, events))
        finally:  # the caller went away, the stream was refused or the server stops
            await _cancel(stopping)
            if following is not None:
                await _cancel(following)
            await stream.aclose()

    handle.__name__ = "WatchImages"
    return handle


class EncodedEvents:
    """Each change's ImageEvent, encoded once for every stream that sends it.

    Streams differ only in whether the caller sees the locations, so an event is kept per
    (revision, locations shown): a change sent to 100 watchers is converted once.
    """

    def __init__(self, size: int = 20_000) -> None:
        self._size = size
        self._encoded: dict[tuple[int, bool], bytes] = {}

    def of(self, change: Change, call: Call) -> bytes:
        shown = call.access.sees_locations(change.image)
        key = (change.revision, shown)
        encoded = self._encoded.get(key)
        if encoded is None:
            if len(self._encoded) >= self._size:
                self._encoded.clear()
            encoded = self._encoded[key] = _event(change, shown).SerializeToString()
        return encoded


def _response(batch: Batch, call: Call, events: EncodedEvents) -> bytes:
    """The WatchImagesResponse of batch, encoded: its events as they were encoded once."""
    parts: list[bytes] = []
    for change in batch.changes:
        encoded = events.of(change, call)
        parts += (_EVENTS_TAG, _varint(len(encoded)), encoded)
    if batch.revision:
        parts += (_REVISION_TAG, _varint(batch.revision))
    return b"".join(parts)


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
    commit_time = Timestamp()
    commit_time.FromDatetime(change.commit_time)
    return pb.ImageEvent(
        revision=change.revision,
        type=_EVENT_TYPES[change.type],
        image=convert.image_to_proto(change.image, locations_shown=locations_shown),
        commit_time=commit_time,
    )


async def _cancel(task: asyncio.Future[Any]) -> None:
    """Cancel task and wait for it to end."""
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def _abort(context: grpc.aio.ServicerContext[Any, Any], status: Any) -> None:
    """End the stream with status (context.abort raises to end the handler), unless the
    caller has gone already."""
    if context.cancelled() or context.done():
        return
    rich = rpc_status.to_status(status)
    await context.abort(rich.code, rich.details, rich.trailing_metadata)
