"""The ceiling: a bare grpc.aio server whose GetImage answers an empty response at once.

bench/run.py loads it with the same load generator as the real server, and divides.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc

from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc


class Empty(pb_grpc.ImageServiceServicer):
    """Only GetImage, and it does nothing."""

    async def GetImage(  # noqa: N802
        self, request: pb.GetImageRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.GetImageResponse:
        return pb.GetImageResponse()


async def serve(listen: str) -> None:
    server = grpc.aio.server()
    pb_grpc.add_ImageServiceServicer_to_server(Empty(), server)  # type: ignore[abstract]
    server.add_insecure_port(listen)
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True)
    asyncio.run(serve(parser.parse_args().listen))


if __name__ == "__main__":
    main()
