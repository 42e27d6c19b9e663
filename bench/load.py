"""The load generator: one process, N calls in flight on a grpc.aio client, for a bounded time.

Run by bench/run.py as a separate process; prints one JSON object of results on stdout.
Imports grpc, the generated stubs and the figures of bench/harness.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

from harness import load_figures

Call = Callable[["pb_grpc.ImageServiceAsyncStub", random.Random], Awaitable[Any]]

URL = "https://store.example/bench/{}.img"


def workloads(image_ids: list[str]) -> dict[str, Call]:
    """Each workload: one logical operation a worker repeats on the images it is given.

    Writers each get images of their own (see run): two workers adding to one image at
    once could push it past its location quota, a refusal the benchmark does not measure.
    """

    async def get_image(stub: pb_grpc.ImageServiceAsyncStub, rng: random.Random) -> None:
        await stub.GetImage(pb.GetImageRequest(image_id=rng.choice(image_ids)))

    async def list_images(stub: pb_grpc.ImageServiceAsyncStub, rng: random.Random) -> None:
        await stub.ListImages(pb.ListImagesRequest(page_size=100))

    async def add_remove(stub: pb_grpc.ImageServiceAsyncStub, rng: random.Random) -> None:
        image_id = rng.choice(image_ids)
        url = URL.format(uuid.uuid4())
        await stub.AddLocation(
            pb.AddLocationRequest(
                image_id=image_id, location=pb.Location(url=url), request_id=str(uuid.uuid4())
            )
        )
        await stub.RemoveLocation(
            pb.RemoveLocationRequest(image_id=image_id, url=url, request_id=str(uuid.uuid4()))
        )

    async def replace_reorder(stub: pb_grpc.ImageServiceAsyncStub, rng: random.Random) -> None:
        image_id = rng.choice(image_ids)
        image = (await stub.GetImage(pb.GetImageRequest(image_id=image_id))).image
        reordered = list(image.locations)
        rng.shuffle(reordered)
        await stub.ReplaceLocation(
            pb.ReplaceLocationRequest(
                image_id=image_id, locations=reordered, request_id=str(uuid.uuid4())
            )
        )

    async def mix_90_10(stub: pb_grpc.ImageServiceAsyncStub, rng: random.Random) -> None:
        if rng.random() < 0.9:
            await get_image(stub, rng)
        else:
            await add_remove(stub, rng)

    return {
        "GetImage": get_image,
        "ListImages": list_images,
        "AddLocation+RemoveLocation": add_remove,
        "ReplaceLocation": replace_reorder,
        "mix 90/10": mix_90_10,
        "empty": get_image,
    }


#: The deadlines the client libraries send (client/imageloc/client/service_config.json).
READ_DEADLINE_SECONDS = 5.0
WRITE_DEADLINE_SECONDS = 10.0
READS = frozenset({"GetImage", "ListImages"})


class TimedStub:
    """A stub whose every call carries the clients' deadline and has its latency recorded:
    p50 and p99 are per RPC."""

    def __init__(
        self,
        stub: pb_grpc.ImageServiceAsyncStub,
        latencies: list[float],
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self._stub = stub
        self._latencies = latencies
        self._metadata = metadata or None

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        deadline = READ_DEADLINE_SECONDS if name in READS else WRITE_DEADLINE_SECONDS

        async def timed(request: Any) -> Any:
            started = time.perf_counter()
            response = await method(request, timeout=deadline, metadata=self._metadata)
            self._latencies.append(time.perf_counter() - started)
            return response

        return timed


async def run(
    *, target: str, workload: str, concurrency: int, seconds: float, channels: int,
    image_ids: list[str], token: str = "", rate: float = 0.0,
) -> dict[str, Any]:  # fmt: skip
    opened = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channels)
    ]
    latencies: list[float] = []
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    stubs = [
        TimedStub(pb_grpc.ImageServiceStub(channel), latencies, metadata) for channel in opened
    ]
    errors: Counter[str] = Counter()
    operations = 0
    began = time.monotonic()
    stop_at = began + seconds
    # Paced (rate > 0): the workers start operations at rate per second in all, evenly
    # spaced, whether or not earlier ones are done; otherwise each starts its next at once.
    interval = concurrency / rate if rate > 0 else 0.0

    async def worker(index: int) -> None:
        nonlocal operations
        rng = random.Random(index)
        stub: Any = stubs[index % len(stubs)]
        call = workloads(image_ids[index::concurrency] or image_ids)[workload]
        next_at = began + index * interval / concurrency
        while time.monotonic() < stop_at:
            if interval:
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at += interval
                if time.monotonic() >= stop_at:
                    break
            try:
                await call(stub, rng)
            except grpc.aio.AioRpcError as error:
                errors[error.code().name] += 1
                continue
            operations += 1

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.monotonic() - began
    for channel in opened:
        await channel.close(None)
    return load_figures(
        workload, operations=operations, latencies=latencies, errors=errors, elapsed=elapsed
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--workload", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--image-ids", required=True, help="a file with one image id per line")
    parser.add_argument("--token-file", help="a file holding the bearer token every call sends")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="operations per second in all (0: unpaced)"
    )
    args = parser.parse_args()
    token = pathlib.Path(args.token_file).read_text().strip() if args.token_file else ""
    with open(args.image_ids) as ids:
        image_ids = [line.strip() for line in ids if line.strip()]
    result = asyncio.run(
        run(
            target=args.target, workload=args.workload, concurrency=args.concurrency,
            seconds=args.seconds, channels=args.channels, image_ids=image_ids, token=token,
            rate=args.rate,
        )
    )  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
