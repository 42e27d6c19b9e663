"""Waiting for changes: ImageWatch, a WatchImages feed that resumes by itself, and
wait_for_status, which gets an image and then watches it (no polling).

Imports grpc, the generated stubs and the client's convert and errors; client.py builds on it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, TypeAlias, TypeVar

import grpc

from imageloc.client.convert import STATUS_WORDS, StatusLike, parse_status, status_word
from imageloc.client.errors import (
    REVISION_COMPACTED,
    WATCHER_TOO_SLOW,
    ImageDeletedError,
    ImagelocError,
    StatusUnreachableError,
    WaitError,
    WaitTimeoutError,
    from_rpc_error,
)
from imageloc.v1 import image_service_pb2 as pb

if TYPE_CHECKING:
    #: Opens one WatchImages stream: the request and its timeout in seconds (None: none).
    StreamOpener: TypeAlias = Callable[
        [pb.WatchImagesRequest, float | None], grpc.CallIterator[pb.WatchImagesResponse]
    ]
    #: GetImage of an id, bounded by a timeout in seconds (None: the client's own).
    ImageGetter: TypeAlias = Callable[[str, float | None], pb.Image]

_log = logging.getLogger(__name__)
_Verdict = TypeVar("_Verdict", bound=WaitError)

#: Glance's status transitions (glance/domain/__init__.py :: Image.valid_state_targets),
#: copied from server/imageloc/server/domain/status.py, since the client does not import the
#: server; a test keeps the two equal.
TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"saving", "uploading", "importing", "active", "deleted"}),
    "saving": frozenset({"active", "killed", "deleted", "queued"}),
    "uploading": frozenset({"importing", "queued", "deleted"}),
    "importing": frozenset({"active", "deleted", "queued"}),
    "active": frozenset({"pending_delete", "deleted", "deactivated"}),
    "killed": frozenset({"deleted"}),
    "pending_delete": frozenset({"deleted", "active"}),
    "deleted": frozenset(),
    "deactivated": frozenset({"active", "deleted"}),
}

#: The statuses of a deleted image: a wait for any other status ends there.
DELETION_STATUSES = frozenset({pb.IMAGE_STATUS_DELETED, pb.IMAGE_STATUS_PENDING_DELETE})


def reachable_statuses(status: StatusLike) -> frozenset[pb.ImageStatus.ValueType]:
    """The statuses an image in `status` can still reach by one or more transitions.

    A status the table does not know (unspecified, or newer than this client) may lead
    anywhere: every status.
    """
    start = status_word(parse_status(status))
    if start not in TRANSITIONS:
        return frozenset(parse_status(word) for word in STATUS_WORDS)
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in TRANSITIONS[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return frozenset(parse_status(word) for word in seen)


@dataclass(frozen=True)
class Backoff:
    """The pause before a watch resumes: `initial` seconds after a first failure, times
    `multiplier` for each further failure in a row, at most `maximum`; any response resets
    it. Each pause is drawn between half the bound and the bound, so that the watchers of
    a replica that went away do not all come back at once."""

    initial: float = 0.1
    maximum: float = 2.0
    multiplier: float = 2.0

    def bound(self, failures: int) -> float:
        """The longest pause after `failures` failures in a row (1 after the first)."""
        return float(min(self.initial * self.multiplier ** max(0, failures - 1), self.maximum))

    def pause(self, failures: int) -> float:
        """A pause after `failures` failures in a row."""
        bound = self.bound(failures)
        return random.uniform(bound / 2, bound)


#: 0.1 s doubling to 2 s, as the service config's retries of unary calls.
BACKOFF = Backoff()


class ImageWatch:
    """The events of a WatchImages feed, each once, in revision order, resumed by itself.

    After UNAVAILABLE (a replica went away, or could not be reached), after a stream that
    ends without an error, and after RESOURCE_EXHAUSTED WATCHER_TOO_SLOW (from the
    `revision` of its metadata, the last one delivered), it opens a new stream from the
    last revision received, events and progress responses alike, after a pause
    (`backoff`), for as long as it is iterated. Any other refusal is raised as
    ImagelocError and ends the watch: OUT_OF_RANGE REVISION_COMPACTED (list again, then
    watch from the list's revision), INVALID_ARGUMENT FUTURE_REVISION or INVALID_REQUEST,
    UNAUTHENTICATED, PERMISSION_DENIED. Each stream asks `open_stream` afresh, so it
    carries a fresh token.

    The first stream opens in the constructor. With start_revision 0 ("from now") the
    constructor also waits for the stream's first response, which the server sends at
    once with the store's revision: every change committed after the constructor returns
    is delivered.

    close(), or leaving a `with` block, cancels the stream; it may come from another
    thread, and a next() blocked there then ends the iteration. Past `deadline` (a
    time.monotonic() instant; None: never), next() raises TimeoutError.
    """

    def __init__(
        self,
        open_stream: StreamOpener,
        *,
        image_ids: Iterable[str] = (),
        start_revision: int = 0,
        deadline: float | None = None,
        backoff: Backoff = BACKOFF,
    ) -> None:
        if isinstance(image_ids, str):
            raise TypeError("image_ids must be a sequence of image ids, not one id")
        self._open_stream = open_stream
        self._image_ids = list(image_ids)
        self._deadline = deadline
        self._backoff = backoff
        self._received = start_revision  # where a new stream starts: nothing repeated
        self._revision = start_revision  # what the caller has seen all of
        self._pending: deque[pb.ImageEvent] = deque()
        self._failures = 0
        self._closed = threading.Event()
        self._lock = threading.Lock()  # guards the current call against close()
        self._call: grpc.CallIterator[pb.WatchImagesResponse] | None = None
        self._responses: Iterator[pb.WatchImagesResponse] | None = None
        try:
            self._connect()
            if start_revision == 0:
                self._receive()
        except BaseException:
            self.close()
            raise

    @property
    def revision(self) -> int:
        """The revision the watch has caught up to: that of the last event returned, or a
        later one from a progress response. A watch started from it misses nothing and
        repeats nothing. Before any response: the start revision."""
        return self._revision

    def __iter__(self) -> ImageWatch:
        return self

    def __next__(self) -> pb.ImageEvent:
        try:
            while not self._pending:
                if not self._receive():
                    raise StopIteration
            if self._closed.is_set():
                raise StopIteration
        except BaseException:
            self.close()  # a watch that stopped, failed or was interrupted is over
            raise
        event = self._pending.popleft()
        self._revision = max(self._revision, event.revision)
        if not self._pending:
            self._revision = max(self._revision, self._received)
        return event

    def close(self) -> None:
        """Cancel the stream and end the iteration; from any thread, any number of times."""
        self._closed.set()
        self._drop()

    def __enter__(self) -> ImageWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _receive(self) -> bool:
        """Take one response into the pending events; False once the watch is closed."""
        while not self._closed.is_set():
            responses = self._connect() if self._responses is None else self._responses
            try:
                response = next(responses)
            except StopIteration:
                self._resume("the stream ended")
                continue
            except grpc.RpcError as err:
                if self._closed.is_set():
                    break
                self._resume_or_raise(from_rpc_error(err), err)
                continue
            self._failures = 0
            self._received = max(
                self._received, response.revision, *(event.revision for event in response.events)
            )
            self._pending.extend(response.events)
            if not response.events:
                self._revision = max(self._revision, self._received)
            return True
        return False

    def _resume_or_raise(self, error: ImagelocError, err: grpc.RpcError) -> None:
        if error.code == grpc.StatusCode.UNAVAILABLE:
            self._resume(str(error))
            return
        if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.reason == WATCHER_TOO_SLOW:
            delivered = error.metadata.get("revision", "")
            if delivered.isdigit():
                self._received = max(self._received, int(delivered))
            self._resume(str(error))
            return
        if error.code == grpc.StatusCode.DEADLINE_EXCEEDED and self._deadline is not None:
            raise TimeoutError("the watch's deadline passed") from err
        raise error from err

    def _resume(self, cause: str) -> None:
        """Drop the stream and pause before the next one (no longer than the deadline)."""
        self._drop()
        self._failures += 1
        pause = self._backoff.pause(self._failures)
        if self._deadline is not None:
            pause = max(0.0, min(pause, self._deadline - time.monotonic()))
        _log.warning(
            "WatchImages: %s; resuming from revision %d in %.2f s", cause, self._received, pause
        )
        self._closed.wait(pause)

    def _connect(self) -> Iterator[pb.WatchImagesResponse]:
        """Open a stream from the last revision received."""
        timeout = None
        if self._deadline is not None:
            timeout = self._deadline - time.monotonic()
            if timeout <= 0:
                raise TimeoutError("the watch's deadline passed")
        request = pb.WatchImagesRequest(image_ids=self._image_ids, start_revision=self._received)
        call = self._open_stream(request, timeout)
        responses = iter(call)
        with self._lock:
            self._call, self._responses = call, responses
            closed = self._closed.is_set()
        if closed:
            _cancel(call)
        return responses

    def _drop(self) -> None:
        with self._lock:
            call, self._call, self._responses = self._call, None, None
        if call is not None:
            _cancel(call)


def _cancel(call: grpc.RpcContext) -> None:
    """Cancel a call; nothing happens to one that has ended."""
    call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leave cancel() untyped


def wait_for_status(
    *,
    image_id: str,
    statuses: StatusLike | Iterable[StatusLike],
    timeout: float | None,
    get_image: ImageGetter,
    open_stream: StreamOpener,
    backoff: Backoff = BACKOFF,
) -> pb.Image:
    """The image once its status is one of `statuses`: ImageClient.wait_for_status."""
    waiter = _Waiter(image_id=image_id, goal=goal_statuses(statuses), timeout=timeout)
    try:
        return waiter.run(get_image=get_image, open_stream=open_stream, backoff=backoff)
    except WaitError:
        raise
    except TimeoutError:
        raise waiter.timed_out() from None
    except ImagelocError as error:
        if error.code == grpc.StatusCode.DEADLINE_EXCEEDED and waiter.past_deadline():
            raise waiter.timed_out() from error
        raise


def goal_statuses(
    statuses: StatusLike | Iterable[StatusLike],
) -> frozenset[pb.ImageStatus.ValueType]:
    """The statuses waited for: one status (word or value) or several; ValueError if none."""
    given = [statuses] if isinstance(statuses, str | int) else list(statuses)
    goal = frozenset(parse_status(status) for status in given)
    if not goal:
        raise ValueError("no status to wait for")
    return goal


class _Waiter:
    """One wait_for_status: the goal, the deadline, the image as last seen."""

    def __init__(
        self, *, image_id: str, goal: frozenset[pb.ImageStatus.ValueType], timeout: float | None
    ) -> None:
        self.image_id = image_id
        self.goal = goal
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.seen: pb.Image | None = None

    def run(
        self, *, get_image: ImageGetter, open_stream: StreamOpener, backoff: Backoff
    ) -> pb.Image:
        image = get_image(self.image_id, self.remaining())
        if self.reached(image):
            return image
        # The image's own revision: no change to it after GetImage is missed. An image
        # older than the change log has revision 0, and a compacted one is refused: then
        # watch from now and look again.
        start = image.revision
        while True:
            try:
                with ImageWatch(
                    open_stream,
                    image_ids=[self.image_id],
                    start_revision=start,
                    deadline=self.deadline,
                    backoff=backoff,
                ) as watch:
                    if start == 0:
                        image = get_image(self.image_id, self.remaining())
                        if self.reached(image):
                            return image
                    for event in watch:
                        if event.image.id != self.image_id:
                            continue
                        image = event.image
                        if self.reached(image, deleted=event.type == pb.IMAGE_EVENT_TYPE_DELETED):
                            return image
                    start = watch.revision
            except ImagelocError as error:
                if isinstance(error, WaitError) or error.reason != REVISION_COMPACTED:
                    raise
                start = 0

    def reached(self, image: pb.Image, *, deleted: bool = False) -> bool:
        """True when image is in a goal status; False to wait on; raises when it never will."""
        self.seen = image
        if image.status in self.goal:
            return True
        word = status_word(image.status)
        if deleted or image.status in DELETION_STATUSES:
            raise self.error(
                ImageDeletedError,
                f"image {self.image_id} was deleted (status {word}) "
                f"before it became {self.goal_words()}",
            )
        if not reachable_statuses(image.status) & self.goal:
            raise self.error(
                StatusUnreachableError,
                f"image {self.image_id} is {word} and can no longer become {self.goal_words()}",
            )
        return False

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def past_deadline(self) -> bool:
        # gRPC's deadline is counted from a moment later than ours: allow for the difference.
        return self.deadline is not None and time.monotonic() >= self.deadline - 0.01

    def timed_out(self) -> WaitTimeoutError:
        seen = (
            "GetImage did not answer"
            if self.seen is None
            else f"status {status_word(self.seen.status)}"
        )
        return self.error(
            WaitTimeoutError,
            f"image {self.image_id} did not become {self.goal_words()} "
            f"within {self.timeout or 0:g} s ({seen})",
        )

    def goal_words(self) -> str:
        return " or ".join(sorted(status_word(status) for status in self.goal))

    def error(self, kind: type[_Verdict], message: str) -> _Verdict:
        return kind(message, image_id=self.image_id, statuses=sorted(self.goal), image=self.seen)
