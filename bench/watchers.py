"""The watchers: N WatchImages streams on a grpc.aio client, for a bounded time.

Run by bench/run.py as a separate process beside the load generator; prints one JSON
object on stdout: events received, events/s, responses with events/s, commit-to-event
latency (p50, p99, of each response's oldest event) and errors.
`--idle` opens the streams on ids that never change and only holds them (memory).
Imports only grpc and the generated stubs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections import Counter
from typing import Any

import grpc

from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc


async def run(
    target: str, *, watchers: int, seconds: float, channels: int, idle: bool
) -> dict[str, Any]:
    opened = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    latencies: list[float] = []
    delivered = 0
    responses = 0
    errors: Counter[str] = Counter()
    ready = asyncio.Event()
    open_count = 0

    async def watch(index: int) -> None:
        nonlocal open_count, delivered, responses
        stub = pb_grpc.ImageServiceStub(opened[index % channels])
        ids = [str(uuid.uuid4())] if idle else []
        call = stub.WatchImages(pb.WatchImagesRequest(image_ids=ids))
        try:
            async for response in call:
                if not response.events:
                    open_count += 1
                    if open_count == watchers:
                        ready.set()
                if response.events:
                    # The oldest event of a response waited longest: its latency stands for
                    # the response (timing every event would cost this process more than
                    # the server spends sending them).
                    delivered += len(response.events)
                    responses += 1
                    commit = response.events[0].commit_time.ToNanoseconds() / 1e9
                    latencies.append(time.time() - commit)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                errors[error.code().name] += 1

    tasks = [asyncio.ensure_future(watch(i)) for i in range(watchers)]
    try:
        await asyncio.wait_for(ready.wait(), 60)
    except TimeoutError:
        errors["NOT_OPENED"] += watchers - open_count
    print(json.dumps({"open": open_count}), flush=True)  # the load may start now
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in opened:
        await channel.close(None)
    latencies.sort()

    def percentile(q: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else 0.0
        )

    return {
        "watchers": watchers,
        "events": delivered,
        "events_per_s": delivered / seconds,
        "responses_per_s": responses / seconds,
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "errors": dict(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--idle", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(
        run(
            args.target,
            watchers=args.watchers,
            seconds=args.seconds,
            channels=args.channels,
            idle=args.idle,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
