"""The Glance endpoint's HTTP server: aiohttp on the server's event loop, each route a call of
the same service the gRPC API calls, under the same policies.

Imports aiohttp, the auth, rpc (the method table and the one mapping of errors) and the
service; the documents and requests modules beside it shape what goes in and out.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from imageloc.server.auth.audit import AuditLog
from imageloc.server.auth.authority import Authority
from imageloc.server.domain import inputs
from imageloc.server.domain.access import CallerAccess, Principal
from imageloc.server.domain.errors import DomainError, Reason
from imageloc.server.domain.model import Image
from imageloc.server.glance import documents, requests
from imageloc.server.glance.errors import error_response
from imageloc.server.observability import logs
from imageloc.server.observability.metrics import Metrics
from imageloc.server.rpc.errors import http_status_of_refusal
from imageloc.server.rpc.methods import METHODS
from imageloc.server.rpc.servicer import count_refusal, refusal_status
from imageloc.server.rpc.store_calls import StoreCalls
from imageloc.server.service import ImageService, page_token_after

log = logging.getLogger("imageloc.glance")

T = TypeVar("T")

#: How long one HTTP call may take (Glance's clients send no deadline).
CALL_SECONDS = 30.0
#: An incoming X-OpenStack-Request-ID is honoured when it has Glance's shape.
_REQUEST_ID = re.compile(r"^req-[0-9a-fA-F-]{36}$")
_REQUEST_ID_KEY = web.RequestKey("request_id", str)
#: Where image data would go: not this service's job (docs/glance-compat.md).
_DATA_ELSEWHERE = (
    "imageloc keeps image records and locations, not image data: upload the data to a"
    " backing store and add its URL as a location."
)
#: The limits of what is read of a request.
MAX_BODY_BYTES = 4 * 1024 * 1024


class RefusedError(Exception):
    """A refusal that answers the HTTP call (an error page), with its status and reason."""

    def __init__(self, code: int, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason


class GlanceGateway:
    """Glance's Image API v2 over service; authority decides who calls and may do what."""

    def __init__(
        self,
        service: ImageService,
        authority: Authority,
        calls: StoreCalls,
        *,
        audit: AuditLog | None = None,
        on_write: Callable[[], None] = lambda: None,
        metrics: Metrics | None = None,
    ) -> None:
        self._service = service
        self._authority = authority
        self._calls = calls
        self._audit = audit
        self._on_write = on_write
        self._metrics = metrics or Metrics.disabled()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def application(self) -> web.Application:
        """The routes (docs/glance-compat.md lists them)."""
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY_BYTES)
        add = app.router.add_route
        add("GET", "/", self._versions_multiple)
        add("GET", "/versions", self._versions)
        add("GET", "/v2", self._v2_redirect)
        add("GET", "/v2/", self._v2_root)
        add("GET", "/v2/schemas/image", self._image_schema)
        add("GET", "/v2/schemas/images", self._images_schema)
        add("POST", "/v2/images", self._create)
        add("GET", "/v2/images", self._list)
        add("GET", "/v2/images/{image_id}", self._show)
        add("PATCH", "/v2/images/{image_id}", self._patch)
        add("DELETE", "/v2/images/{image_id}", self._delete)
        add("POST", "/v2/images/{image_id}/actions/deactivate", self._deactivate)
        add("POST", "/v2/images/{image_id}/actions/reactivate", self._reactivate)
        add("PUT", "/v2/images/{image_id}/tags/{tag}", self._add_tag)
        add("DELETE", "/v2/images/{image_id}/tags/{tag}", self._remove_tag)
        add("POST", "/v2/images/{image_id}/locations", self._add_location)
        add("GET", "/v2/images/{image_id}/locations", self._locations)
        for path in ("/v2/images/{image_id}/file", "/v2/images/{image_id}/stage"):
            add("*", path, self._no_data)
        add("POST", "/v2/images/{image_id}/import", self._no_data)
        add("GET", "/v2/info/import", self._no_data)
        add("GET", "/v2/info/stores", self._no_data)
        return app

    async def start(self, listen: str) -> None:
        """Listen on host:port (port 0: a free one, then self.port)."""
        host, _, port = listen.rpartition(":")
        runner = web.AppRunner(self.application(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port))
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise OSError(f"cannot listen on {listen} (--glance-listen): {error}") from error
        self._runner = runner
        server = site._server  # the bound socket, to learn the port picked for 0
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else int(port)

    async def stop(self) -> None:
        """Stop listening; calls in flight are answered first."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # Every response carries a request id; a refusal becomes Glance's error page.

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Each request answered (_answer), and counted by its route's template."""
        began = time.perf_counter()
        code = 500
        try:
            response = await self._answer(request, handler)
            code = response.status
            return response
        except web.HTTPException as redirect:
            code = redirect.status
            raise
        finally:
            resource = request.match_info.route.resource
            self._metrics.http_request(
                method=request.method,
                route=resource.canonical if resource is not None else "(unmatched)",
                code=code,
                seconds=time.perf_counter() - began,
            )

    async def _answer(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        given = request.headers.get("X-OpenStack-Request-ID", "")
        request_id = given if _REQUEST_ID.match(given) else f"req-{uuid.uuid4()}"
        request[_REQUEST_ID_KEY] = request_id
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "(unmatched)"
        with logs.call_facts(
            rpc=f"glance:{request.method} {route}",
            imageId=request.match_info.get("image_id", ""),
            requestId=request_id,
        ):
            headers = {"x-openstack-request-id": request_id}
            response, reason = await self._respond(request, handler, headers)
            if response.status >= 400:
                facts = logs.current_facts()
                code = f"HTTP {response.status}"
                logs.refused(log, facts["rpc"], code, reason, facts.get("imageId", ""))
            return response

    async def _respond(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        headers: dict[str, str],
    ) -> tuple[web.StreamResponse, str]:
        """handler's response, or the error page of its refusal and its ErrorInfo reason;
        headers on either."""
        accept = request.headers.get("Accept", "")
        try:
            response = await handler(request)
        except RefusedError as refusal:
            page = error_response(
                refusal.code, refusal.message, accept=accept, reason=refusal.reason, headers=headers
            )
            return page, refusal.reason
        except web.HTTPException as error:  # aiohttp's own: unknown route, wrong method
            if error.status < 400:  # a redirect
                error.headers.update(headers)
                raise
            return error_response(error.status, error.reason, accept=accept, headers=headers), ""
        except Exception as error:  # a refusal before the call (a bad query), or a bug
            status = refusal_status(error, f"glance {request.method} {request.path}")
            code, reason = http_status_of_refusal(status)
            count_refusal(self._metrics, status)
            page = error_response(
                code, status.message, accept=accept, reason=reason, headers=headers
            )
            return page, reason
        response.headers.update(headers)
        return response, ""

    # Discovery, without a token.

    def _base_url(self, request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    async def _versions(self, request: web.Request) -> web.Response:
        return web.json_response(documents.versions(self._base_url(request)))

    async def _versions_multiple(self, request: web.Request) -> web.Response:
        return web.json_response(documents.versions(self._base_url(request)), status=300)

    async def _v2_redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(f"{self._base_url(request)}/v2/")

    async def _v2_root(self, request: web.Request) -> web.Response:
        raise RefusedError(404, "The resource could not be found.")

    async def _image_schema(self, request: web.Request) -> web.Response:
        await self._principal(request)
        return web.json_response(documents.image_schema())

    async def _images_schema(self, request: web.Request) -> web.Response:
        await self._principal(request)
        return web.json_response(documents.images_schema())

    async def _no_data(self, request: web.Request) -> web.Response:
        raise RefusedError(501, _DATA_ELSEWHERE)

    # Images.

    async def _create(self, request: web.Request) -> web.Response:
        body = await _json_body(request)

        def work(service: ImageService, access: CallerAccess) -> Image:
            return service.create_image(**requests.create_arguments(body))

        image, access = await self._call(request, "CreateImage", work)
        document = documents.image_document(image, locations_shown=access.sees_locations(image))
        location = f"{self._base_url(request)}/v2/images/{image.id}"
        return web.json_response(document, status=201, headers={"Location": location})

    async def _show(self, request: web.Request) -> web.Response:
        image_id = request.match_info["image_id"]
        image, access = await self._call(
            request, "GetImage", lambda service, _: service.get_image(_known_id(image_id))
        )
        return self._image(image, access)

    async def _list(self, request: web.Request) -> web.Response:
        query = requests.list_query(request.query, lambda key: request.query.getall(key, []))

        def work(service: ImageService, access: CallerAccess) -> dict[str, Any]:
            if query.limit == 0:
                return {"images": [], "first": _first(request), "schema": "/v2/schemas/images"}
            token = ""
            if query.marker is not None:
                try:
                    marker = service.get_image(inputs.parse_image_id(query.marker, field="marker"))
                except DomainError:
                    raise RefusedError(400, f"No image found with ID {query.marker[:64]}") from None
                token = page_token_after(marker, query.filters, query.order)
            page = service.list_images(
                page_size=query.limit, page_token=token, filters=query.filters, order=query.order
            )
            body: dict[str, Any] = {
                "images": [
                    documents.image_document(i, locations_shown=access.sees_locations(i))
                    for i in page.images
                ],
                "first": _first(request),
                "schema": "/v2/schemas/images",
            }
            if page.next_page_token and page.images:
                body["next"] = _next(request, page.images[-1].id)
            return body

        body, _ = await self._call(request, "ListImages", work)
        return web.json_response(body)

    async def _delete(self, request: web.Request) -> web.Response:
        image_id = request.match_info["image_id"]
        await self._call(
            request, "DeleteImage", lambda service, _: service.delete_image(_known_id(image_id))
        )
        return _empty(204)

    async def _patch(self, request: web.Request) -> web.Response:
        content_type = request.content_type
        if content_type not in requests.PATCH_TYPES:
            raise RefusedError(
                415,
                "Image PATCH expects Content-Type one of: "
                + ", ".join(sorted(requests.PATCH_TYPES)),
            )
        image_id = request.match_info["image_id"]
        body = await _json_body(request)
        principal = await self._principal(request)

        def work(service: ImageService, access: CallerAccess) -> Image:
            patch = requests.patch_of(service, content_type, body)
            also = []
            if patch.adds_locations:
                also.append(self._access(principal, "ReplaceLocation"))
            if patch.removes_locations:
                also.append(self._access(principal, "RemoveLocation"))
            return service.apply(_known_id(image_id), patch.decisions, also=also)

        image, access = await self._call(request, "UpdateImage", work, principal=principal)
        return self._image(image, access)

    async def _deactivate(self, request: web.Request) -> web.Response:
        return await self._action(request, "DeactivateImage", ImageService.deactivate_image)

    async def _reactivate(self, request: web.Request) -> web.Response:
        return await self._action(request, "ReactivateImage", ImageService.reactivate_image)

    async def _action(
        self, request: web.Request, rpc: str, move: Callable[[ImageService, str], Image]
    ) -> web.Response:
        """POST .../actions/...: the status move, answered 204."""
        image_id = request.match_info["image_id"]
        await self._call(request, rpc, lambda service, _: move(service, _known_id(image_id)))
        return _empty(204)

    async def _add_tag(self, request: web.Request) -> web.Response:
        return await self._tag(request, present=True)

    async def _remove_tag(self, request: web.Request) -> web.Response:
        return await self._tag(request, present=False)

    async def _tag(self, request: web.Request, *, present: bool) -> web.Response:
        image_id, tag = request.match_info["image_id"], request.match_info["tag"]

        def work(service: ImageService, access: CallerAccess) -> Image:
            image_id_ = _known_id(image_id)
            if not present:
                image = service.get_image(image_id_)
                if tag not in image.tags:
                    raise RefusedError(404, f"Tag {tag[:255]} not found")
            return service.apply(image_id_, [service.tag_set(tag, present=present)])

        await self._call(request, "UpdateImage", work)
        return _empty(204)

    async def _add_location(self, request: web.Request) -> web.Response:
        image_id = request.match_info["image_id"]
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("url"), str):
            raise RefusedError(
                400,
                "Provided object does not match schema 'location': 'url' is a required property",
            )
        location = requests.location_from_json({"url": body["url"], "metadata": {}}, "url")
        data = requests.validation_data_from_json(body.get("validation_data"))

        def work(service: ImageService, access: CallerAccess) -> Image:
            decision = service.location_added_to_queued(
                location, validation_data=data, by_service=access.service
            )
            return service.apply(_known_id(image_id), [decision])

        await self._call(request, "AddLocation", work)
        return _empty(202)

    async def _locations(self, request: web.Request) -> web.Response:
        image_id = request.match_info["image_id"]

        def work(service: ImageService, access: CallerAccess) -> list[dict[str, Any]]:
            image = service.get_image(_known_id(image_id))
            if not access.sees_locations(image):
                raise DomainError(
                    Reason.POLICY_DENIED,
                    "Policy doesn't allow get_image_location to be performed.",
                    image_id=image.id,
                    metadata={"policy": "get_image_location"},
                )
            return [{"url": loc.url, "metadata": dict(loc.metadata)} for loc in image.locations]

        found, _ = await self._call(request, "GetImage", work)
        return web.json_response(found)

    # One call: who, under which policy, on the store's calls.

    def _image(self, image: Image, access: CallerAccess) -> web.Response:
        document = documents.image_document(image, locations_shown=access.sees_locations(image))
        return web.json_response(document)

    async def _principal(self, request: web.Request) -> Principal:
        token = request.headers.get("X-Auth-Token", "")
        try:
            principal = self._authority.principal(f"Bearer {token}" if token else None, dict)
        except Exception as error:
            status = refusal_status(error, "glance")
            code, reason = http_status_of_refusal(status)
            count_refusal(self._metrics, status)
            raise RefusedError(code, status.message, reason) from None
        logs.note(
            sub=principal.user_id,
            project=principal.project_id,
            serviceIdentity=principal.service_identity,
        )
        return principal

    def _access(self, principal: Principal, rpc: str) -> CallerAccess:
        method = METHODS[rpc]
        return self._authority.access(
            principal, rule=method.policy, writes=method.writes, queued_rule=method.queued_policy
        )

    async def _call(
        self,
        request: web.Request,
        rpc: str,
        work: Callable[[ImageService, CallerAccess], T],
        *,
        principal: Principal | None = None,
    ) -> tuple[T, CallerAccess]:
        """work's result on this call's service and the caller's access, or its refusal as
        Glance's status (the ErrorInfo's httpStatus, as the gRPC API reports it)."""
        logs.note(rpc=f"glance:{request.method} {rpc}")  # as its audit line names it
        principal = principal or await self._principal(request)
        access = self._access(principal, rpc)
        service = self._service.for_call(seconds_left=CALL_SECONDS, access=access)
        writes = METHODS[rpc].writes
        try:
            result = await self._calls.run(lambda: work(service, access))
        except RefusedError:
            raise
        except Exception as error:  # refusal_status logs what is a bug
            status = refusal_status(error, rpc)
            code, reason = http_status_of_refusal(status)
            count_refusal(self._metrics, status)
            self._audited(rpc, principal, request, f"HTTP {code}", reason)
            raise RefusedError(code, status.message, reason) from None
        if writes:
            self._on_write()
            self._audited(rpc, principal, request, "OK", "")
        return result, access

    def _audited(
        self, rpc: str, principal: Principal, request: web.Request, code: str, reason: str
    ) -> None:
        if self._audit is None or not METHODS[rpc].writes:
            return
        self._audit.record(
            rpc=f"glance:{request.method} {rpc}",
            principal=principal,
            image_id=request.match_info.get("image_id", ""),
            code=code,
            reason=reason,
            request_id=request[_REQUEST_ID_KEY],
        )


def _known_id(image_id: str) -> str:
    """A path's image id; one that is no UUID is a 404, as Glance answers it."""
    try:
        return inputs.parse_image_id(image_id)
    except DomainError:
        raise RefusedError(
            404, f"No image found with ID {image_id[:64]}", "IMAGE_NOT_FOUND"
        ) from None


async def _json_body(request: web.Request) -> Any:
    try:
        text = await request.text()
        return json.loads(text) if text else None
    except web.HTTPRequestEntityTooLarge:
        raise RefusedError(413, "The request body is larger than 4 MiB.") from None
    except (ValueError, UnicodeDecodeError):
        raise RefusedError(400, "Malformed JSON in request body.") from None


def _empty(code: int) -> web.Response:
    """An empty 202 or 204, with no JSON content type (glanceclient would parse it)."""
    return web.Response(status=code, body=b"", content_type="text/html", charset="UTF-8")


def _first(request: web.Request) -> str:
    return f"/v2/images?{request.query_string}" if request.query_string else "/v2/images"


def _next(request: web.Request, last_id: str) -> str:
    """Glance's relative next link: the same query with the marker of the page's last image."""
    kept = [(k, v) for k, v in request.query.items() if k != "marker"]
    kept.append(("marker", last_id))
    return "/v2/images?" + "&".join(f"{k}={_quoted(v)}" for k, v in kept)


def _quoted(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe=":,")
