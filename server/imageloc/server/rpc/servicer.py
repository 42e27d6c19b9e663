"""imageloc.v1.ImageService over gRPC: request to domain, call the service, domain to response.

Thin by design: no rule lives here; request_guard parses and bounds the request first,
so that an unreadable request is refused like any other. The handlers are plain functions
(grpcio-testing drives them as they are); add_to_server serves them on grpc.aio, their
store work run by StoreCalls. Imports the generated code, the service, the conversions and
the error mapping.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2
from grpc_status import rpc_status

from imageloc.server.domain.errors import DomainError
from imageloc.server.domain.ports import DeadlineExceededError, RequestKey, StoreUnavailableError
from imageloc.server.rpc import convert
from imageloc.server.rpc.drain import Admission
from imageloc.server.rpc.errors import (
    CONCURRENT_UPDATE_REASON,
    DEADLINE_REASON,
    INTERNAL_REASON,
    STOPPING_REASON,
    UNAVAILABLE_REASON,
    domain_error_status,
    server_status,
)
from imageloc.server.rpc.request_guard import (
    UnreadableRequest,
    acceptable,
    fingerprint,
    request_decoder,
)
from imageloc.server.rpc.store_calls import StoreCalls
from imageloc.server.service import ConcurrentUpdateError, ImageService, page_token_after
from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

#: ListImages answers at most this many bytes of images, whatever page_size asked: gRPC
#: clients refuse responses over 4 MiB by default.
MAX_LIST_RESPONSE_BYTES = 3 * 1024 * 1024

SERVICE = pb.DESCRIPTOR.services_by_name["ImageService"]

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp")
Handler = Callable[["ImageServicer", Req, grpc.ServicerContext], Resp]


def add_to_server(
    servicer: ImageServicer, server: grpc.aio.Server, calls: StoreCalls, admission: Admission
) -> None:
    """Serve servicer's RPCs on an asyncio server, the store work of each run by calls.

    Every request is read by request_decoder, and admitted by admission (refused
    UNAVAILABLE once the server is stopping); otherwise the same as the generated
    add_ImageServiceServicer_to_server.
    """
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            _asynchronous(servicer, method.name, calls, admission),
            request_deserializer=request_decoder(getattr(pb, method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
        for method in SERVICE.methods
    }
    generic = grpc.method_handlers_generic_handler(SERVICE.full_name, handlers)
    server.add_generic_rpc_handlers((generic,))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)  # type: ignore[attr-defined]


def _asynchronous(
    servicer: ImageServicer, name: str, calls: StoreCalls, admission: Admission
) -> Callable[[Message | UnreadableRequest, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
    """servicer's handler `name` as a coroutine: its refusals become rich statuses."""
    handler = inspect.unwrap(getattr(type(servicer), name))

    async def handle(
        request: Message | UnreadableRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        if not await admission.enter():
            rich = rpc_status.to_status(STOPPING)
            await context.abort(rich.code, rich.details, rich.trailing_metadata)
        try:
            readable = acceptable(request)
            return await calls.run(lambda: handler(servicer, readable, context))
        except Exception as error:  # refusal_status logs what is a bug
            status = refusal_status(error, name)
        finally:
            admission.leave()
        rich = rpc_status.to_status(status)
        await context.abort(rich.code, rich.details, rich.trailing_metadata)

    handle.__name__ = name
    return handle


#: The answer to a call that arrives once the server has stopped admitting calls.
STOPPING = server_status(
    code_pb2.UNAVAILABLE, STOPPING_REASON, "The server is shutting down; try another.", 503
)


def abort_with(context: grpc.ServicerContext, status: status_pb2.Status) -> NoReturn:
    """End the call with status, its details in grpc-status-details-bin."""
    rich = rpc_status.to_status(status)
    context.set_trailing_metadata(rich.trailing_metadata)
    context.abort(rich.code, rich.details)
    raise AssertionError("context.abort returned")  # pragma: no cover


def refusal_status(error: Exception, method: str) -> status_pb2.Status:
    """The status that answers a handler's error: a refusal, or INTERNAL for a bug."""
    if isinstance(error, DomainError):
        return domain_error_status(error)
    if isinstance(error, StoreUnavailableError):
        log.warning("store unavailable: %s", error)
        return server_status(
            code_pb2.UNAVAILABLE, UNAVAILABLE_REASON, "The image store is unavailable.", 503
        )
    if isinstance(error, DeadlineExceededError):
        return server_status(code_pb2.DEADLINE_EXCEEDED, DEADLINE_REASON, str(error), 504)
    if isinstance(error, ConcurrentUpdateError):
        return server_status(code_pb2.ABORTED, CONCURRENT_UPDATE_REASON, str(error), 409)
    # A bug, not a refusal: log it whole, and still answer with an ErrorInfo.
    log.error("unexpected error in %s", method, exc_info=error)
    return server_status(code_pb2.INTERNAL, INTERNAL_REASON, "Internal server error.", 500)


def refusals(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """handler for a synchronous context (grpcio-testing): its errors end the call.

    Unreadable requests and requests past the request limits are refused before handler
    runs. The asyncio server unwraps this and does the same with `_asynchronous`.
    """

    @functools.wraps(handler)
    def wrapped(
        self: ImageServicer, request: Req | UnreadableRequest, context: grpc.ServicerContext
    ) -> Resp:
        try:
            return handler(self, acceptable(request), context)
        except Exception as error:  # refusal_status logs what is a bug
            abort_with(context, refusal_status(error, handler.__name__))

    return wrapped


def _etag(request: object) -> str | None:
    return request.etag if request.HasField("etag") else None  # type: ignore[attr-defined]


class ImageServicer(pb_grpc.ImageServiceServicer):
    """Every RPC of imageloc.v1.ImageService."""

    def __init__(self, service: ImageService) -> None:
        self._service = service

    def _for(self, context: grpc.ServicerContext, request: Message) -> ImageService:
        """The service for this call: bounded by its deadline, idempotent by its request_id."""
        request_id: str = getattr(request, "request_id", "")
        key = RequestKey(request_id, fingerprint(request)) if request_id else None
        return self._service.for_call(seconds_left=context.time_remaining(), request=key)

    @refusals
    def CreateImage(
        self, request: pb.CreateImageRequest, context: grpc.ServicerContext
    ) -> pb.CreateImageResponse:
        image = self._for(context, request).create_image(
            name=request.name,
            disk_format=request.disk_format,
            container_format=request.container_format,
            visibility=convert.visibility_from_proto(request.visibility),
            protected=request.protected,
            image_id=request.id if request.HasField("id") else None,
        )
        return pb.CreateImageResponse(image=convert.image_to_proto(image))

    @refusals
    def GetImage(
        self, request: pb.GetImageRequest, context: grpc.ServicerContext
    ) -> pb.GetImageResponse:
        image = self._for(context, request).get_image(request.image_id)
        return pb.GetImageResponse(image=convert.image_to_proto(image))

    @refusals
    def ListImages(
        self, request: pb.ListImagesRequest, context: grpc.ServicerContext
    ) -> pb.ListImagesResponse:
        status = convert.status_from_proto(request.status) if request.HasField("status") else None
        page = self._for(context, request).list_images(
            page_size=request.page_size, page_token=request.page_token, status=status
        )
        response = pb.ListImagesResponse(next_page_token=page.next_page_token)
        size = 0
        for shown, image in enumerate(page.images):
            message = convert.image_to_proto(image)
            size += message.ByteSize() + 8
            if size > MAX_LIST_RESPONSE_BYTES and shown:
                # A shorter page, so that every client's default 4 MiB receive limit holds.
                response.next_page_token = page_token_after(page.images[shown - 1], status)
                break
            response.images.append(message)
        return response

    @refusals
    def DeleteImage(
        self, request: pb.DeleteImageRequest, context: grpc.ServicerContext
    ) -> pb.DeleteImageResponse:
        image = self._for(context, request).delete_image(request.image_id, etag=_etag(request))
        return pb.DeleteImageResponse(image=convert.image_to_proto(image))

    @refusals
    def BeginUpload(
        self, request: pb.BeginUploadRequest, context: grpc.ServicerContext
    ) -> pb.BeginUploadResponse:
        image = self._for(context, request).begin_upload(request.image_id, etag=_etag(request))
        return pb.BeginUploadResponse(image=convert.image_to_proto(image))

    @refusals
    def CompleteUpload(
        self, request: pb.CompleteUploadRequest, context: grpc.ServicerContext
    ) -> pb.CompleteUploadResponse:
        image = self._for(context, request).complete_upload(
            request.image_id,
            location=convert.optional_location(request),
            size=request.size,
            checksum=request.checksum,
            os_hash_algo=request.os_hash_algo,
            os_hash_value=request.os_hash_value,
            etag=_etag(request),
        )
        return pb.CompleteUploadResponse(image=convert.image_to_proto(image))

    @refusals
    def FailUpload(
        self, request: pb.FailUploadRequest, context: grpc.ServicerContext
    ) -> pb.FailUploadResponse:
        image = self._for(context, request).fail_upload(request.image_id, etag=_etag(request))
        return pb.FailUploadResponse(image=convert.image_to_proto(image))

    @refusals
    def StageImage(
        self, request: pb.StageImageRequest, context: grpc.ServicerContext
    ) -> pb.StageImageResponse:
        image = self._for(context, request).stage_image(request.image_id, etag=_etag(request))
        return pb.StageImageResponse(image=convert.image_to_proto(image))

    @refusals
    def BeginImport(
        self, request: pb.BeginImportRequest, context: grpc.ServicerContext
    ) -> pb.BeginImportResponse:
        image = self._for(context, request).begin_import(request.image_id, etag=_etag(request))
        return pb.BeginImportResponse(image=convert.image_to_proto(image))

    @refusals
    def DeactivateImage(
        self, request: pb.DeactivateImageRequest, context: grpc.ServicerContext
    ) -> pb.DeactivateImageResponse:
        image = self._for(context, request).deactivate_image(request.image_id, etag=_etag(request))
        return pb.DeactivateImageResponse(image=convert.image_to_proto(image))

    @refusals
    def ReactivateImage(
        self, request: pb.ReactivateImageRequest, context: grpc.ServicerContext
    ) -> pb.ReactivateImageResponse:
        image = self._for(context, request).reactivate_image(request.image_id, etag=_etag(request))
        return pb.ReactivateImageResponse(image=convert.image_to_proto(image))

    @refusals
    def AddLocation(
        self, request: pb.AddLocationRequest, context: grpc.ServicerContext
    ) -> pb.AddLocationResponse:
        image = self._for(context, request).add_location(
            request.image_id,
            location=convert.optional_location(request),
            index=request.index if request.HasField("index") else None,
            validation_data=convert.validation_data_from_proto(request),
            etag=_etag(request),
        )
        return pb.AddLocationResponse(image=convert.image_to_proto(image))

    @refusals
    def RemoveLocation(
        self, request: pb.RemoveLocationRequest, context: grpc.ServicerContext
    ) -> pb.RemoveLocationResponse:
        target = request.WhichOneof("target")
        image = self._for(context, request).remove_location(
            request.image_id,
            index=request.index if target == "index" else None,
            url=request.url if target == "url" else None,
            etag=_etag(request),
        )
        return pb.RemoveLocationResponse(image=convert.image_to_proto(image))

    @refusals
    def ReplaceLocation(
        self, request: pb.ReplaceLocationRequest, context: grpc.ServicerContext
    ) -> pb.ReplaceLocationResponse:
        image = self._for(context, request).replace_locations(
            request.image_id,
            new_locations=[convert.location_from_proto(loc) for loc in request.locations],
            validation_data=convert.validation_data_from_proto(request),
            etag=_etag(request),
        )
        return pb.ReplaceLocationResponse(image=convert.image_to_proto(image))
