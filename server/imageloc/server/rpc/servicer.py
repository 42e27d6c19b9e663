"""imageloc.v1.ImageService over gRPC: request to domain, call the service, domain to response.

Thin by design: no rule lives here. Every call is read and bounded (request_guard), its
caller authenticated and bound to policy (auth), its mutation audited, the same way for
every RPC (`ImageServicer.serve`, by the facts in rpc.methods); the handlers only convert.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from imageloc.server.auth.audit import AuditLog
from imageloc.server.auth.authority import Authority
from imageloc.server.auth.policy import GlancePolicy
from imageloc.server.auth.tokens import AuthenticationError
from imageloc.server.domain import inputs, listing
from imageloc.server.domain.access import CallerAccess, Principal
from imageloc.server.domain.errors import DomainError
from imageloc.server.domain.model import Image
from imageloc.server.domain.ports import (
    DeadlineExceededError,
    RequestKey,
    StoreBusyError,
    StoreUnavailableError,
)
from imageloc.server.observability import logs
from imageloc.server.observability.metrics import Metrics
from imageloc.server.observability.tracing import Tracing
from imageloc.server.rpc import convert
from imageloc.server.rpc.drain import Admission
from imageloc.server.rpc.errors import (
    CONCURRENT_UPDATE_REASON,
    DEADLINE_REASON,
    INTERNAL_REASON,
    STOPPING_REASON,
    UNAUTHENTICATED_REASON,
    UNAVAILABLE_REASON,
    domain_error_status,
    server_status,
)
from imageloc.server.rpc.methods import METHODS, Method
from imageloc.server.rpc.request_guard import (
    UnreadableRequest,
    acceptable,
    fingerprint,
    request_decoder,
)
from imageloc.server.rpc.store_calls import StoreCalls
from imageloc.server.service import (
    ConcurrentUpdateError,
    ImageService,
    page_token_after,
)
from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

#: ListImages answers at most this many bytes of images, whatever page_size asked: gRPC
#: clients refuse responses over 4 MiB by default.
MAX_LIST_RESPONSE_BYTES = 3 * 1024 * 1024

SERVICE = pb.DESCRIPTOR.services_by_name["ImageService"]

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
Out = TypeVar("Out")
#: A handler as written: the request and its call, to the response.
Handler = Callable[["ImageServicer", Req, "Call"], Resp]
#: A handler as gRPC calls it.
GrpcHandler = Callable[["ImageServicer", Req, grpc.ServicerContext], Resp]


def add_to_server(
    servicer: ImageServicer,
    server: grpc.aio.Server,
    calls: StoreCalls,
    admission: Admission,
    *,
    streams: Mapping[str, StreamHandler] | None = None,
    on_write: Callable[[], None] = lambda: None,
) -> None:
    """Serve servicer's RPCs on an asyncio server, the store work of each run by calls.

    Every request is read by request_decoder, and admitted by admission (refused
    UNAVAILABLE once the server is stopping); otherwise the same as the generated
    add_ImageServiceServicer_to_server. streams serve the server-streaming RPCs
    (rpc/watch.py); on_write is told of every mutation that succeeded (the change feed).
    """
    streams = streams or {}
    handlers = {}
    for method in SERVICE.methods:
        decoder = request_decoder(getattr(pb, method.input_type.name))
        encoder = getattr(pb, method.output_type.name).SerializeToString
        if method.server_streaming:
            if method.name not in streams:
                continue  # not served: UNIMPLEMENTED
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                streams[method.name],
                request_deserializer=decoder,
                response_serializer=_encoded_or(encoder),
            )
            continue
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _asynchronous(servicer, method.name, calls, admission, on_write),
            request_deserializer=decoder,
            response_serializer=encoder,
        )
    generic = grpc.method_handlers_generic_handler(SERVICE.full_name, handlers)
    server.add_generic_rpc_handlers((generic,))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)  # type: ignore[attr-defined]


def _encoded_or(encoder: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """encoder, passing through a message a stream encoded itself (rpc/watch.py)."""

    def encode(message: Any) -> bytes:
        return message if isinstance(message, bytes) else encoder(message)

    return encode


#: A server-streaming handler as the asyncio server calls it.
StreamHandler = Callable[[Any, "grpc.aio.ServicerContext[Any, Any]"], Awaitable[None]]


def _asynchronous(
    servicer: ImageServicer,
    name: str,
    calls: StoreCalls,
    admission: Admission,
    on_write: Callable[[], None],
) -> Callable[[Message | UnreadableRequest, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
    """servicer's handler `name` as a coroutine: its refusals become rich statuses."""
    handler = inspect.unwrap(getattr(type(servicer), name))
    writes = METHODS[name].writes
    observed = servicer.metrics.rpc(SERVICE.full_name, name)

    async def handle(
        request: Message | UnreadableRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        observed.started()
        observed.received()
        began = time.perf_counter()
        code = "OK"
        try:
            if not await admission.enter():
                code = "UNAVAILABLE"
                report_refusal(servicer.metrics, STOPPING, name, _image_id(request))
                await abort_async(context, STOPPING)
            try:
                response = await calls.run(
                    lambda: servicer.serve(handler, request, context, retry_busy=True)
                )
            except Refused as refused:
                status = refused.status
            except BusyCallError as busy:  # calls gave up trying again
                status = busy.refuse().status
            else:
                if writes:
                    on_write()
                observed.sent()
                return response
            finally:
                admission.leave()
            code = code_name(status)
            await abort_async(context, status)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            observed.handled(code, time.perf_counter() - began)

    handle.__name__ = name
    return handle


#: The answer to a call that arrives once the server has stopped admitting calls.
STOPPING = server_status(
    code_pb2.UNAVAILABLE, STOPPING_REASON, "The server is shutting down; try another.", 503
)


class Refused(Exception):  # noqa: N818 - a refusal, not a failure of ours
    """A call's answer is this refusal (already logged and audited)."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status

    @property
    def reason(self) -> str:
        """The ErrorInfo reason of the status (the span of the call reads it)."""
        return _error_info(self.status).reason


class BusyCallError(StoreBusyError):
    """A call the store was too busy for: StoreCalls tries it again, or `refuse` ends it."""

    def __init__(self, error: StoreBusyError, refuse: Callable[[], Refused]) -> None:
        super().__init__(str(error))
        self.refuse = refuse


async def abort_async(
    context: grpc.aio.ServicerContext[Any, Any], status: status_pb2.Status
) -> NoReturn:
    """End an asyncio call with status, its details in grpc-status-details-bin."""
    rich = rpc_status.to_status(status)
    await context.abort(rich.code, rich.details, rich.trailing_metadata)
    raise AssertionError("context.abort returned")  # pragma: no cover


def code_name(status: status_pb2.Status) -> str:
    """The name of status's code, as grpc.StatusCode names it (OK, NOT_FOUND...)."""
    return code_pb2.Code.Name(status.code)


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
    if isinstance(error, AuthenticationError):
        return server_status(
            code_pb2.UNAUTHENTICATED,
            UNAUTHENTICATED_REASON,
            error.message,
            401,
            metadata={"cause": error.cause},
        )
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


def report_refusal(
    metrics: Metrics, status: status_pb2.Status, rpc: str, image_id: str = ""
) -> str:
    """Count the refusal status of a call of rpc (count_refusal) and log its INFO line;
    its ErrorInfo reason."""
    reason = count_refusal(metrics, status)
    logs.refused(log, rpc, code_name(status), reason, image_id)
    return reason


def count_refusal(metrics: Metrics, status: status_pb2.Status) -> str:
    """Count the refusal status in metrics (by reason; a store error or an authentication
    failure by its kind or cause too); its ErrorInfo reason."""
    info = _error_info(status)
    metrics.refused(info.reason)
    kind = STORE_ERROR_KINDS.get(info.reason)
    if kind is not None:
        metrics.store_error(kind)
    elif info.reason == UNAUTHENTICATED_REASON:
        metrics.auth_failed(info.metadata.get("cause", ""))
    return info.reason


def refusals(handler: Handler[Req, Resp]) -> GrpcHandler[Req, Resp]:
    """handler for a synchronous context (grpcio-testing): its refusals end the call.

    The asyncio server unwraps this and does the same with `_asynchronous`.
    """

    @functools.wraps(handler)
    def wrapped(self: ImageServicer, request: Req, context: grpc.ServicerContext) -> Resp:
        try:
            return self.serve(handler, request, context)
        except Refused as refused:
            abort_with(context, refused.status)

    return wrapped


@dataclasses.dataclass(frozen=True)
class Watch:
    """An authorized WatchImages, ready to stream."""

    image_ids: list[str]
    start_revision: int
    call: Call


@dataclasses.dataclass(frozen=True)
class Call:
    """One call as its handler sees it: the service bound to it, and what its caller may see."""

    service: ImageService
    access: CallerAccess

    def image(self, image: Image) -> pb.Image:
        """image as this caller may see it: its locations only if the caller may see them."""
        return convert.image_to_proto(image, locations_shown=self.access.sees_locations(image))


#: The refusals that are the store failing, by the kind imageloc_store_errors_total counts.
STORE_ERROR_KINDS = {
    UNAVAILABLE_REASON: "unavailable",
    DEADLINE_REASON: "deadline",
    CONCURRENT_UPDATE_REASON: "contention",
    INTERNAL_REASON: "internal",
}

#: ErrorInfo reasons whose refusals of a read are audited too.
_AUDITED_REFUSALS = frozenset({UNAUTHENTICATED_REASON, "POLICY_DENIED"})


def _authorization(context: grpc.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else None
    return None


def _image_id(request: object, response: object = None) -> str:
    image = getattr(response, "image", None)
    if image is not None and image.id:
        return str(image.id)
    named = getattr(request, "image", None)  # UpdateImage's
    return str(
        getattr(request, "image_id", "") or getattr(request, "id", "") or getattr(named, "id", "")
    )


def _etag(request: object) -> str | None:
    return request.etag if request.HasField("etag") else None  # type: ignore[attr-defined]


class ImageServicer(pb_grpc.ImageServiceServicer):
    """Every RPC of imageloc.v1.ImageService.

    authority authenticates callers (default: `--auth none`, every caller the no-auth
    admin, under Glance's default policy); audit, when given, gets a line per mutation
    and per refused credential or policy.
    """

    def __init__(
        self,
        service: ImageService,
        authority: Authority | None = None,
        audit: AuditLog | None = None,
        *,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._service = service
        self._authority = authority or Authority(GlancePolicy.load())
        self._audit = audit
        self.metrics = metrics or Metrics.disabled()
        self._tracing = tracing or Tracing()

    def serve(
        self,
        handler: Callable[[ImageServicer, Req, Call], Out],
        request: Req | UnreadableRequest,
        context: Any,
        *,
        retry_busy: bool = False,
        rpc: str = "",
    ) -> Out:
        """One call of handler (of RPC `rpc`, by default its name): read, authenticate,
        bind to policy, run, audit.

        Raises Refused with the status that answers the call; with retry_busy, BusyCallError
        when the store is busy (the caller may try the call again).
        """
        method = METHODS[rpc or handler.__name__]
        with (
            self._tracing.server_span(method.name, context.invocation_metadata() or ()),
            logs.call_facts(rpc=method.name),
        ):
            return self._serve(method, handler, request, context, retry_busy=retry_busy)

    def _serve(
        self,
        method: Method,
        handler: Callable[[ImageServicer, Req, Call], Out],
        request: Req | UnreadableRequest,
        context: Any,
        *,
        retry_busy: bool,
    ) -> Out:
        principal: Principal | None = None
        logs.note(
            imageId=_image_id(request),
            requestId=str(getattr(request, "request_id", "")),
        )
        try:
            readable = acceptable(request)
            principal = self._authority.principal(_authorization(context), context.auth_context)
            logs.note(
                sub=principal.user_id,
                project=principal.project_id,
                serviceIdentity=principal.service_identity,
            )
            access = self._authority.access(
                principal,
                rule=method.policy,
                writes=method.writes,
                queued_rule=method.queued_policy,
            )
            service = self._service.for_call(
                seconds_left=context.time_remaining(),
                request=_request_key(method, readable, access),
                access=access,
            )
            response = handler(self, readable, Call(service, access))
        except Exception as error:  # refusal_status logs what is a bug
            refuse = functools.partial(self._refused, method, request, principal, error)
            if retry_busy and isinstance(error, StoreBusyError):
                raise BusyCallError(error, refuse) from None
            raise refuse() from None
        if method.writes and self._audit is not None:
            self._audit.record(
                rpc=method.name,
                principal=principal,
                image_id=_image_id(readable, response),
                code="OK",
                reason="",
                request_id=str(getattr(readable, "request_id", "")),
            )
        return response

    def _refused(
        self,
        method: Method,
        request: object,
        principal: Principal | None,
        error: Exception,
    ) -> Refused:
        """The refusal that answers error, counted, logged and audited."""
        status = refusal_status(error, method.name)
        image_id = _image_id(request)
        reason = report_refusal(self.metrics, status, method.name, image_id)
        if self._audit is None or (not method.writes and reason not in _AUDITED_REFUSALS):
            return Refused(status)
        self._audit.record(
            rpc=method.name,
            principal=principal,
            image_id=image_id,
            code=code_name(status),
            reason=reason,
            request_id=str(getattr(request, "request_id", "")),
        )
        return Refused(status)

    @property
    def service(self) -> ImageService:
        """The service the calls run on."""
        return self._service

    def prepare_watch(self, request: pb.WatchImagesRequest, call: Call) -> Watch:
        """WatchImages before its stream: the caller may list, the ids are ids."""
        image_ids = [inputs.parse_image_id(i, field="image_ids") for i in request.image_ids]
        call.access.listing(None)
        return Watch(image_ids=image_ids, start_revision=request.start_revision, call=call)

    def WatchImages(self, request: pb.WatchImagesRequest, context: Any) -> Any:
        """Streams are served by the asyncio server only (rpc/watch.py), not this class."""
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "WatchImages needs the asyncio server")

    @refusals
    def CreateImage(self, request: pb.CreateImageRequest, call: Call) -> pb.CreateImageResponse:
        image = call.service.create_image(
            name=request.name,
            disk_format=request.disk_format,
            container_format=request.container_format,
            visibility=convert.visibility_from_proto(request.visibility),
            protected=request.protected,
            image_id=request.id if request.HasField("id") else None,
            owner=request.owner if request.HasField("owner") else None,
            min_disk=request.min_disk,
            min_ram=request.min_ram,
            tags=request.tags,
            os_hidden=request.os_hidden,
            virtual_size=request.virtual_size if request.HasField("virtual_size") else None,
            properties=request.properties,
        )
        return pb.CreateImageResponse(image=call.image(image))

    @refusals
    def UpdateImage(self, request: pb.UpdateImageRequest, call: Call) -> pb.UpdateImageResponse:
        update = convert.image_update_from_proto(request)
        image = call.service.update_image(request.image.id, update, etag=_etag(request))
        return pb.UpdateImageResponse(image=call.image(image))

    @refusals
    def GetImage(self, request: pb.GetImageRequest, call: Call) -> pb.GetImageResponse:
        image = call.service.get_image(request.image_id)
        return pb.GetImageResponse(image=call.image(image))

    @refusals
    def ListImages(self, request: pb.ListImagesRequest, call: Call) -> pb.ListImagesResponse:
        filters = convert.image_filters_from_proto(request)
        order = listing.parse_order(request.order_by)
        page = call.service.list_images(
            page_size=request.page_size,
            page_token=request.page_token,
            filters=filters,
            order=order,
        )
        response = pb.ListImagesResponse(
            next_page_token=page.next_page_token, revision=page.revision
        )
        size = 0
        for shown, image in enumerate(page.images):
            message = call.image(image)
            size += message.ByteSize() + 8
            if size > MAX_LIST_RESPONSE_BYTES and shown:
                # A shorter page, so that every client's default 4 MiB receive limit holds.
                response.next_page_token = page_token_after(page.images[shown - 1], filters, order)
                break
            response.images.append(message)
        return response

    @refusals
    def DeleteImage(self, request: pb.DeleteImageRequest, call: Call) -> pb.DeleteImageResponse:
        image = call.service.delete_image(request.image_id, etag=_etag(request))
        return pb.DeleteImageResponse(image=call.image(image))

    @refusals
    def BeginUpload(self, request: pb.BeginUploadRequest, call: Call) -> pb.BeginUploadResponse:
        image = call.service.begin_upload(request.image_id, etag=_etag(request))
        return pb.BeginUploadResponse(image=call.image(image))

    @refusals
    def CompleteUpload(
        self, request: pb.CompleteUploadRequest, call: Call
    ) -> pb.CompleteUploadResponse:
        image = call.service.complete_upload(
            request.image_id,
            location=convert.optional_location(request),
            size=request.size,
            checksum=request.checksum,
            os_hash_algo=request.os_hash_algo,
            os_hash_value=request.os_hash_value,
            etag=_etag(request),
        )
        return pb.CompleteUploadResponse(image=call.image(image))

    @refusals
    def FailUpload(self, request: pb.FailUploadRequest, call: Call) -> pb.FailUploadResponse:
        image = call.service.fail_upload(request.image_id, etag=_etag(request))
        return pb.FailUploadResponse(image=call.image(image))

    @refusals
    def StageImage(self, request: pb.StageImageRequest, call: Call) -> pb.StageImageResponse:
        image = call.service.stage_image(request.image_id, etag=_etag(request))
        return pb.StageImageResponse(image=call.image(image))

    @refusals
    def BeginImport(self, request: pb.BeginImportRequest, call: Call) -> pb.BeginImportResponse:
        image = call.service.begin_import(request.image_id, etag=_etag(request))
        return pb.BeginImportResponse(image=call.image(image))

    @refusals
    def DeactivateImage(
        self, request: pb.DeactivateImageRequest, call: Call
    ) -> pb.DeactivateImageResponse:
        image = call.service.deactivate_image(request.image_id, etag=_etag(request))
        return pb.DeactivateImageResponse(image=call.image(image))

    @refusals
    def ReactivateImage(
        self, request: pb.ReactivateImageRequest, call: Call
    ) -> pb.ReactivateImageResponse:
        image = call.service.reactivate_image(request.image_id, etag=_etag(request))
        return pb.ReactivateImageResponse(image=call.image(image))

    @refusals
    def AddLocation(self, request: pb.AddLocationRequest, call: Call) -> pb.AddLocationResponse:
        image = call.service.add_location(
            request.image_id,
            location=convert.optional_location(request),
            index=request.index if request.HasField("index") else None,
            validation_data=convert.validation_data_from_proto(request),
            etag=_etag(request),
        )
        return pb.AddLocationResponse(image=call.image(image))

    @refusals
    def RemoveLocation(
        self, request: pb.RemoveLocationRequest, call: Call
    ) -> pb.RemoveLocationResponse:
        target = request.WhichOneof("target")
        image = call.service.remove_location(
            request.image_id,
            index=request.index if target == "index" else None,
            url=request.url if target == "url" else None,
            etag=_etag(request),
        )
        return pb.RemoveLocationResponse(image=call.image(image))

    @refusals
    def ReplaceLocation(
        self, request: pb.ReplaceLocationRequest, call: Call
    ) -> pb.ReplaceLocationResponse:
        image = call.service.replace_locations(
            request.image_id,
            new_locations=[convert.location_from_proto(loc) for loc in request.locations],
            validation_data=convert.validation_data_from_proto(request),
            etag=_etag(request),
        )
        return pb.ReplaceLocationResponse(image=call.image(image))


def _request_key(method: Method, request: Any, access: CallerAccess) -> RequestKey | None:
    """The idempotency key of the call: its request_id, in the caller's namespace."""
    if not method.request_id or not request.request_id:
        return None
    return RequestKey(request.request_id, fingerprint(request), namespace=access.namespace)


def _error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    """The status's ErrorInfo (an empty one if it has none)."""
    info = error_details_pb2.ErrorInfo()
    for detail in status.details:
        if detail.Unpack(info):
            return info
    return info
