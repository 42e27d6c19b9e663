"""The HTTP load generator: N requests in flight on the Glance endpoint, for a bounded time.

Run by bench/run.py --glance beside bench/load.py's gRPC load, with the same workloads'
work (GET an image; a PATCH that adds a location and one that removes it) and the same
JSON figures on stdout (bench/harness.py). Imports aiohttp.
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
from typing import Any

import aiohttp

from harness import load_figures

PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
URL = "https://store.example/bench/{}.img"
#: The workloads this endpoint has, by bench/load.py's names.
WORKLOADS = ("GetImage", "AddLocation+RemoveLocation")


async def run(
    *, target: str, workload: str, concurrency: int, seconds: float, image_ids: list[str]
) -> dict[str, Any]:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    operations = 0
    began = time.monotonic()
    stop_at = began + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=10)
    headers = {"X-Auth-Token": "bench", "Accept": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as s:

        async def call(method: str, path: str, body: Any = None) -> Any:
            started = time.perf_counter()
            extra = PATCH if method == "PATCH" else None
            async with s.request(method, target + path, json=body, headers=extra) as response:
                text = await response.text()
                if response.status >= 400:
                    raise RuntimeError(f"HTTP {response.status}")
            latencies.append(time.perf_counter() - started)
            return json.loads(text) if text else None

        async def worker(index: int) -> None:
            nonlocal operations
            rng = random.Random(index)
            mine = image_ids[index::concurrency] or image_ids  # writers: images of their own
            while time.monotonic() < stop_at:
                image_id = rng.choice(mine)
                path = f"/v2/images/{image_id}"
                try:
                    if workload == "GetImage":
                        await call("GET", path)
                    else:
                        url = URL.format(uuid.uuid4())
                        add = [
                            {
                                "op": "add",
                                "path": "/locations/-",
                                "value": {"url": url, "metadata": {}},
                            }
                        ]
                        image = await call("PATCH", path, add)
                        last = len(image["locations"]) - 1
                        await call("PATCH", path, [{"op": "remove", "path": f"/locations/{last}"}])
                except (TimeoutError, RuntimeError, aiohttp.ClientError) as error:
                    errors[str(error) or type(error).__name__] += 1
                    continue
                operations += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.monotonic() - began
    return load_figures(
        workload, operations=operations, latencies=latencies, errors=errors, elapsed=elapsed
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True, help="http://host:port of the endpoint")
    parser.add_argument("--workload", required=True, choices=WORKLOADS)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--image-ids", required=True, help="a file with one image id per line")
    args = parser.parse_args()
    ids = pathlib.Path(args.image_ids).read_text().split()
    result = asyncio.run(
        run(
            target=args.target, workload=args.workload, concurrency=args.concurrency,
            seconds=args.seconds, image_ids=ids,
        )
    )  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
