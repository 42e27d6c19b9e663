"""grpc.health.v1 that takes part in the drain: its calls count as arrivals, its watches end.

Imports grpc health's asyncio servicer and the admission.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from imageloc.server.rpc.drain import Admission


class DrainingHealth(HealthServicer):  # type: ignore[misc]
    """Health that answers while the server stops (held like any call once it stops
    admitting), and ends each Watch UNAVAILABLE then, so that a watcher moves to another
    replica rather than hold the stop until the grace period cancels it."""

    def __init__(self, admission: Admission) -> None:
        super().__init__()
        self._admission = admission

    def serving(self) -> dict[str, bool]:
        """Each service name set (the server's is "") and whether it is SERVING now."""
        statuses = getattr(self, "_server_status", {})
        return {
            name: status == health_pb2.HealthCheckResponse.SERVING
            for name, status in dict(statuses).items()
        }

    async def Check(  # noqa: N802 - the RPC's name
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        await self._admission.pass_through()
        response: health_pb2.HealthCheckResponse = await super().Check(request, context)
        return response

    async def Watch(  # noqa: N802 - the RPC's name
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await self._admission.pass_through()
        watching = asyncio.ensure_future(super().Watch(request, context))
        closing = asyncio.ensure_future(self._admission.closed())
        try:
            await asyncio.wait((watching, closing), return_when=asyncio.FIRST_COMPLETED)
        finally:  # the caller went away, or one of the two ended: neither outlives the call
            closing.cancel()
            if not watching.done():
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watching
        if not watching.cancelled():
            watching.result()  # the watch ended by itself: its outcome is the call's
            return
        await self._admission.pass_through()
        await context.abort(grpc.StatusCode.UNAVAILABLE, "The server is shutting down.")
