"""ImageClient: typed Python calls to the imageloc ImageService over gRPC.

Every method returns the resulting pb.Image (or a page / an iterator of them) and
raises ImagelocError when the server refuses. Watching and waiting live in watch.py.
Every call carries the OpenTelemetry context it is made in (opentelemetry-api only).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message
from opentelemetry import propagate

from imageloc.client.channel import bearer_metadata, is_loopback, open_channel, tls_credentials
from imageloc.client.convert import (
    LocationLike,
    MetadataLike,
    StatusLike,
    ValidationLike,
    VisibilityLike,
    parse_status,
    parse_visibility,
    to_location,
    to_locations,
    to_validation_data,
)
from imageloc.client.errors import from_rpc_error
from imageloc.client.watch import ImageWatch, wait_for_status
from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"


_Request = TypeVar("_Request", bound=Message)
_Response = TypeVar("_Response", bound=Message)


class ImageClient:
    """A connection to one imageloc server.

    Give `target` ("host:port") to open a channel the client owns and closes, with
    the shipped service config (per-method deadlines, retries of safe calls) and
    keepalive; or `channel` to use one you own. `timeout`, when given, is the
    deadline of each call in seconds, instead of the service config's (a watch's streams
    have none; wait_for_status bounds its calls by its own timeout as well).

    The channel is TLS when any of `root_certificates` (PEM; None trusts the system's
    roots), `certificate_chain` and `private_key` (PEM, a client certificate for mTLS) or
    `credentials` (ready grpc.ChannelCredentials) is given, else plaintext. `token` is
    sent as `authorization: Bearer <token>` with every call; `token_provider` instead is
    called for every call, so it can refresh the token (and should cache it: it runs once
    per call and per retry). Over plaintext a token is sent only to a loopback target.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = None,
        channel: grpc.Channel | None = None,
        token: str | None = None,
        token_provider: Callable[[], str] | None = None,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        if token is not None and token_provider is not None:
            raise ValueError("give token or token_provider, not both")
        provider = token_provider if token is None else _fixed(token)
        pems = (root_certificates, certificate_chain, private_key)
        tls = credentials is not None or any(pem is not None for pem in pems)
        if channel is not None and tls:
            raise ValueError("give a channel or TLS credentials for a new one, not both")
        self.target = target
        self.timeout = timeout
        self._owns_channel = channel is None
        # grpc sends call credentials only over TLS: elsewhere the token is call metadata.
        self._token_provider = None if tls else provider
        if channel is None and tls:
            channel = open_channel(
                target,
                credentials=tls_credentials(
                    root_certificates=root_certificates,
                    certificate_chain=certificate_chain,
                    private_key=private_key,
                    credentials=credentials,
                    token_provider=provider,
                ),
            )
        elif channel is None:
            if provider is not None and not is_loopback(target):
                raise ValueError(
                    f"a token goes in plaintext only to a loopback server, not to {target}: use TLS"
                )
            channel = open_channel(target)
        self._channel = channel
        self._stub = pb_grpc.ImageServiceStub(self._channel)

    def __enter__(self) -> ImageClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel if the client opened it."""
        if self._owns_channel:
            self._channel.close()

    def _call(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        *,
        within: float | None = None,
    ) -> _Response:
        """Invoke one RPC with the client's deadline, turning refusals into ImagelocError.

        `within` (seconds) shortens the deadline, for a call that is part of a longer wait.
        A mutation without a request_id gets a new one, which the channel's retries of it
        then share: a retry after a lost answer is answered, not applied again.
        """
        mutation: Any = request  # a message with a request_id field, when it is a mutation
        if "request_id" in request.DESCRIPTOR.fields_by_name and not mutation.request_id:
            mutation.request_id = str(uuid.uuid4())
        timeout = self.timeout
        if within is not None:
            timeout = within if timeout is None else min(timeout, within)
        try:
            return method(request, timeout=timeout, metadata=self._metadata())
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The call metadata: the token, when it does not go as call credentials, and the
        OpenTelemetry context the call is made in (W3C traceparent and tracestate, by the
        global propagator; nothing without a current span)."""
        traced: dict[str, str] = {}
        propagate.inject(traced)
        provider = self._token_provider
        if provider is None:
            return tuple(traced.items()) or None
        return (*bearer_metadata(provider()), *traced.items())

    def _open_watch(
        self, request: pb.WatchImagesRequest, timeout: float | None
    ) -> grpc.CallIterator[pb.WatchImagesResponse]:
        """One WatchImages stream. Not the client's deadline: a watch runs until it is closed
        (and the service config gives WatchImages none)."""
        return self._stub.WatchImages(request, timeout=timeout, metadata=self._metadata())

    def _get_image_within(self, image_id: str, within: float | None) -> pb.Image:
        request = pb.GetImageRequest(image_id=image_id)
        return self._call(self._stub.GetImage, request, within=within).image

    # Images.

    def create_image(
        self,
        name: str,
        *,
        disk_format: str = "",
        container_format: str = "",
        visibility: VisibilityLike | None = None,
        protected: bool = False,
        image_id: str | None = None,
        min_disk: int = 0,
        min_ram: int = 0,
        tags: Iterable[str] = (),
        os_hidden: bool = False,
        virtual_size: int | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> pb.Image:
        """Register a new image, queued; `image_id` None lets the server pick a UUID.

        The record fields are Glance's (docs/api.md): boot minimums, tags, hidden, the
        unpacked size (None: unknown) and extra properties.
        """
        request = pb.CreateImageRequest(
            name=name,
            disk_format=disk_format,
            container_format=container_format,
            visibility=parse_visibility(visibility),
            protected=protected,
            min_disk=min_disk,
            min_ram=min_ram,
            tags=list(tags),
            os_hidden=os_hidden,
            properties=dict(properties or {}),
        )
        if image_id is not None:
            request.id = image_id
        if virtual_size is not None:
            request.virtual_size = virtual_size
        return self._call(self._stub.CreateImage, request).image

    def update_image(
        self,
        image_id: str,
        *,
        name: str | None = None,
        disk_format: str | None = None,
        container_format: str | None = None,
        visibility: VisibilityLike | None = None,
        protected: bool | None = None,
        min_disk: int | None = None,
        min_ram: int | None = None,
        tags: Iterable[str] | None = None,
        os_hidden: bool | None = None,
        virtual_size: int | None = None,
        properties: Mapping[str, str] | None = None,
        remove_properties: Iterable[str] = (),
        etag: str | None = None,
    ) -> pb.Image:
        """Change the fields given (UpdateImage: each becomes a path of the update mask);
        `properties` sets those keys, `remove_properties` removes keys; the others stay.
        `etag` makes the change conditional (ETAG_MISMATCH when the image has changed)."""
        image = pb.Image(id=image_id)
        paths: list[str] = []
        plain: dict[str, Any] = {
            "name": name, "disk_format": disk_format, "container_format": container_format,
            "protected": protected, "min_disk": min_disk, "min_ram": min_ram,
            "os_hidden": os_hidden, "virtual_size": virtual_size,
        }  # fmt: skip
        for field, value in plain.items():
            if value is not None:
                setattr(image, field, value)
                paths.append(field)
        if visibility is not None:
            image.visibility = parse_visibility(visibility)
            paths.append("visibility")
        if tags is not None:
            image.tags.extend(tags)
            paths.append("tags")
        for key, value in (properties or {}).items():
            image.properties[key] = value
            paths.append(f"properties.{key}")
        paths += [f"properties.{key}" for key in remove_properties]
        request = pb.UpdateImageRequest(
            image=image, update_mask=field_mask_pb2.FieldMask(paths=paths), etag=etag
        )
        return self._call(self._stub.UpdateImage, request).image

    def get_image(self, image_id: str) -> pb.Image:
        """The image with this id."""
        return self._call(self._stub.GetImage, pb.GetImageRequest(image_id=image_id)).image

    def list_images_page(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        status: StatusLike | None = None,
        **filters: Any,
    ) -> pb.ListImagesResponse:
        """One page of images, newest first unless `order_by` says otherwise ("name, size
        desc"); pass its next_page_token for the next, with the same filters. Filters are
        ListImagesRequest's: name, owner, tags (each), properties (equal), os_hidden,
        size_min, size_max, visibility."""
        request = pb.ListImagesRequest(page_size=page_size, page_token=page_token)
        if status is not None:
            request.status = parse_status(status)
        for field, value in filters.items():
            if value is None:
                continue
            if field == "visibility":
                request.visibility = parse_visibility(value)
            elif field == "tags":
                request.tags.extend(value)
            elif field == "properties":
                request.properties.update(value)
            else:
                setattr(request, field, value)
        return self._call(self._stub.ListImages, request)

    def list_images(
        self, *, status: StatusLike | None = None, page_size: int = 0, **filters: Any
    ) -> Iterator[pb.Image]:
        """Every image that passes the filters (list_images_page's), in order, fetching
        pages as needed."""
        token = ""
        while True:
            page = self.list_images_page(
                page_size=page_size, page_token=token, status=status, **filters
            )
            yield from page.images
            token = page.next_page_token
            if not token:
                return

    def delete_image(self, image_id: str, *, etag: str | None = None) -> pb.Image:
        """Delete an image; returns it as deleted (or pending_delete)."""
        request = pb.DeleteImageRequest(image_id=image_id, etag=etag)
        return self._call(self._stub.DeleteImage, request).image

    # Changes.

    def watch_images(self, image_ids: Iterable[str] = (), start_revision: int = 0) -> ImageWatch:
        """Every change to the images `image_ids` (empty: every image the caller may see),
        as pb.ImageEvent, each once, in revision order, until the watch is closed.

        `start_revision`: deliver the changes after it (a ListImagesResponse.revision, an
        Image.revision, or the `revision` of an earlier watch); 0: those after the watch
        starts, which this call waits for, so any change committed after it returns comes.

        The watch resumes by itself from the last revision received, events and progress
        responses alike, so nothing is missed and nothing repeated: after UNAVAILABLE (a
        server stopping, or not reachable yet), after a stream that ends without an
        error, and after RESOURCE_EXHAUSTED WATCHER_TOO_SLOW, each after a pause of 0.1 s
        doubling to 2 s (reset by any response; each resume is logged as a warning on
        the `imageloc.client.watch` logger). Other refusals raise ImagelocError and end
        it: OUT_OF_RANGE REVISION_COMPACTED when start_revision is older than the
        server's retained log (list again, then watch from the list's revision),
        INVALID_ARGUMENT FUTURE_REVISION or INVALID_REQUEST, UNAUTHENTICATED. The streams
        have no deadline; each sends the client's token, asked afresh.

        Close the watch (close(), or use it in a `with` block; also from another thread)
        to cancel its stream; `watch.revision` is where a later watch picks up.
        """
        return ImageWatch(self._open_watch, image_ids=image_ids, start_revision=start_revision)

    def wait_for_status(
        self,
        image_id: str,
        statuses: StatusLike | Iterable[StatusLike],
        timeout: float | None,
    ) -> pb.Image:
        """The image once its status is one of `statuses` (words such as "active" or
        pb.ImageStatus values; one or several), waiting at most `timeout` seconds (None:
        no bound) for the whole wait, GetImage and resumed streams included.

        Gets the image, returns it at once when it is in one of the statuses, else
        watches it from its revision (no polling, no change missed) and returns it as the
        first event that brings it there. Raises, all subclasses of ImagelocError
        (imageloc.client.errors), with the image as last seen in their `image`:
        WaitTimeoutError (DEADLINE_EXCEEDED, WAIT_TIMEOUT; also a TimeoutError) when the
        timeout passes first; ImageDeletedError (NOT_FOUND, IMAGE_DELETED) when the image
        is deleted (status deleted or pending_delete); StatusUnreachableError
        (FAILED_PRECONDITION, STATUS_UNREACHABLE) when its status can no longer reach any
        of them by Glance's transitions (killed, waiting for active; active, waiting for
        queued). A missing image is the server's NOT_FOUND ImagelocError, other refusals
        are ImagelocError as from any call, and ValueError is an unknown status word.
        """
        return wait_for_status(
            image_id=image_id,
            statuses=statuses,
            timeout=timeout,
            get_image=self._get_image_within,
            open_stream=self._open_watch,
        )

    # Lifecycle.

    def begin_upload(self, image_id: str, *, etag: str | None = None) -> pb.Image:
        """Move a queued image to saving."""
        request = pb.BeginUploadRequest(image_id=image_id, etag=etag)
        return self._call(self._stub.BeginUpload, request).image

    def complete_upload(
        self,
        image_id: str,
        *,
        url: str,
        metadata: MetadataLike | None = None,
        size: int = 0,
        checksum: str = "",
        os_hash_algo: str = "",
        os_hash_value: str = "",
        etag: str | None = None,
    ) -> pb.Image:
        """Move a saving or importing image to active, with `url` as its first location."""
        request = pb.CompleteUploadRequest(
            image_id=image_id,
            location=to_location((url, metadata)),
            size=size,
            checksum=checksum,
            os_hash_algo=os_hash_algo,
            os_hash_value=os_hash_value,
            etag=etag,
        )
        return self._call(self._stub.CompleteUpload, request).image

    def fail_upload(self, image_id: str, *, etag: str | None = None) -> pb.Image:
        """Move a saving image to killed."""
        request = pb.FailUploadRequest(image_id=image_id, etag=etag)
        return self._call(self._stub.FailUpload, request).image

    def stage_image(self, image_id: str, *, etag: str | None = None) -> pb.Image:
        """Move a queued image to uploading."""
        request = pb.StageImageRequest(image_id=image_id, etag=etag)
        return self._call(self._stub.StageImage, request).image

    def begin_import(self, image_id: str, *, etag: str | None = None) -> pb.Image:
        """Move a queued or uploading image to importing."""
        request = pb.BeginImportRequest(image_id=image_id, etag=etag)
        return self._call(self._stub.BeginImport, request).image

    def deactivate_image(self, image_id: str, *, etag: str | None = None) -> pb.Image:
        """Move an active image to deactivated."""
        request = pb.DeactivateImageRequest(image_id=image_id, etag=etag)
        return self._call(self._stub.DeactivateImage, request).image

    def reactivate_image(self, image_id: str, *, etag: str | None = None) -> pb.Image:
        """Move a deactivated image to active."""
        request = pb.ReactivateImageRequest(image_id=image_id, etag=etag)
        return self._call(self._stub.ReactivateImage, request).image

    # Locations.

    def add_location(
        self,
        image_id: str,
        url: str,
        *,
        metadata: MetadataLike | None = None,
        index: int | None = None,
        validation_data: ValidationLike | None = None,
        etag: str | None = None,
    ) -> pb.Image:
        """Insert a location at `index` (None appends); a queued image becomes active."""
        request = pb.AddLocationRequest(
            image_id=image_id,
            location=to_location((url, metadata)),
            index=index,
            validation_data=to_validation_data(validation_data),
            etag=etag,
        )
        return self._call(self._stub.AddLocation, request).image

    def remove_location(
        self,
        image_id: str,
        *,
        index: int | None = None,
        url: str | None = None,
        etag: str | None = None,
    ) -> pb.Image:
        """Remove the location at `index` or the first with `url`; give exactly one."""
        if (index is None) == (url is None):
            raise ValueError("give exactly one of index and url")
        request = pb.RemoveLocationRequest(image_id=image_id, etag=etag)
        if index is not None:
            request.index = index
        if url is not None:
            request.url = url
        return self._call(self._stub.RemoveLocation, request).image

    def replace_locations(
        self,
        image_id: str,
        locations: Sequence[LocationLike],
        *,
        validation_data: ValidationLike | None = None,
        etag: str | None = None,
    ) -> pb.Image:
        """Set the whole location list, in order; a queued image becomes active."""
        request = pb.ReplaceLocationRequest(
            image_id=image_id,
            locations=to_locations(locations),
            validation_data=to_validation_data(validation_data),
            etag=etag,
        )
        return self._call(self._stub.ReplaceLocation, request).image


def _fixed(token: str) -> Callable[[], str]:
    """A token provider that always gives token."""
    return lambda: token
