"""The soak: a bounded loopback load over a realistic mix; reports calls, errors and server RSS.

It starts `imageloc serve` (or loads --target), drives it from threads here for --seconds, and
exits 0 when no call failed unexpectedly and the server's RSS levelled off.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import IO, Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

from harness import START_SECONDS, free_port, rss_mib, wait_serving

IMAGELOC = pathlib.Path(sys.executable).with_name("imageloc")

#: Refusals the API documents and a random mix runs into (LAST_LOCATION, ETAG_MISMATCH, a
#: NOT_FOUND for an image another thread deleted...): answers, not errors. Every other code is.
REFUSAL_CODES = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

SCHEMES = ("https://store.example", "rbd://fsid/pool", "s3://bucket", "swift://account/container")
MD5 = "cd" * 16
SHA512 = "ab" * 64
#: How often a removal goes ahead on an image with one location, to be refused LAST_LOCATION.
LAST_LOCATION_ATTEMPTS = 0.1
STOP_SECONDS = 30.0


class Stats:
    """Thread-safe counts: calls by RPC, refusals by code and reason, errors by code."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0
        self.by_rpc: collections.Counter[str] = collections.Counter()
        self.refusals: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()

    def answered(self, rpc: str) -> None:
        with self._lock:
            self.calls += 1
            self.by_rpc[rpc] += 1

    def failed(self, rpc: str, error: grpc.RpcError) -> None:
        code: grpc.StatusCode = error.code()
        label = f"{code.name} {reason_of(error)}".strip()
        with self._lock:
            self.calls += 1
            self.by_rpc[rpc] += 1
            if code in REFUSAL_CODES:
                self.refusals[label] += 1
            else:
                self.errors[label] += 1

    def snapshot(self) -> tuple[int, int, int]:
        """calls, refusals, errors so far."""
        with self._lock:
            return self.calls, sum(self.refusals.values()), sum(self.errors.values())


def reason_of(error: grpc.RpcError) -> str:
    """The ErrorInfo reason of a refusal; empty when it carries none."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return ""
    for packed in status.details:
        info = error_details_pb2.ErrorInfo()
        if packed.Unpack(info):
            reason: str = info.reason
            return reason
    return ""


class ImagePool:
    """The images the load works on, with the location URLs each last had; at most capacity."""

    def __init__(self, capacity: int) -> None:
        self._lock = threading.Lock()
        self._urls: dict[str, list[str]] = {}
        self.capacity = capacity

    def pick(self, rng: random.Random) -> tuple[str, list[str]] | None:
        with self._lock:
            if not self._urls:
                return None
            image_id = rng.choice(list(self._urls))
            return image_id, list(self._urls[image_id])

    def keep(self, image: pb.Image) -> None:
        """Remember image's locations, as the latest answer about it says."""
        with self._lock:
            self._urls[image.id] = [loc.url for loc in image.locations]

    def evict(self, rng: random.Random) -> str | None:
        """Forget a random image when over capacity; its id, to delete it."""
        with self._lock:
            if len(self._urls) <= self.capacity:
                return None
            image_id = rng.choice(list(self._urls))
            del self._urls[image_id]
            return image_id

    def __len__(self) -> int:
        with self._lock:
            return len(self._urls)


def new_location(rng: random.Random) -> pb.Location:
    """A location with a fresh URL in one of the accepted schemes, and a little metadata."""
    location = pb.Location(url=f"{rng.choice(SCHEMES)}/{uuid.uuid4()}.img")
    location.metadata.update({"store": "soak", "weight": str(rng.randint(1, 9))})
    return location


def request_id() -> str:
    """A fresh request id: every write is sent as a retrying client would send it."""
    return str(uuid.uuid4())


class Mix:
    """One operation of a realistic client at a time: reads, location edits and lifecycles."""

    def __init__(
        self, stub: pb_grpc.ImageServiceStub, pool: ImagePool, stats: Stats, timeout: float
    ) -> None:
        self._stub = stub
        self._pool = pool
        self._stats = stats
        self._timeout = timeout
        self._operations: list[tuple[Callable[[random.Random], None], int]] = [
            (self.get_image, 30),
            (self.list_images, 10),
            (self.add_location, 15),
            (self.remove_location, 15),
            (self.reorder_locations, 10),
            (self.create_with_locations, 6),
            (self.upload, 5),
            (self.deactivate_and_reactivate, 5),
            (self.stage_and_import, 2),
            (self.fail_upload, 2),
        ]

    def run_one(self, rng: random.Random) -> None:
        """Run one operation, picked by weight."""
        functions, weights = zip(*self._operations, strict=True)
        rng.choices(functions, weights=weights)[0](rng)

    def call(self, rpc: str, request: Any) -> Any | None:
        """Make one RPC and count it; the response, or None when it failed."""
        method = getattr(self._stub, rpc)
        try:
            response = method(request, timeout=self._timeout)
        except grpc.RpcError as error:
            self._stats.failed(rpc, error)
            return None
        self._stats.answered(rpc)
        return response

    def keep(self, response: Any | None) -> None:
        if response is not None:
            self._pool.keep(response.image)

    def get_image(self, rng: random.Random) -> None:
        if picked := self._pool.pick(rng):
            self.keep(self.call("GetImage", pb.GetImageRequest(image_id=picked[0])))

    def list_images(self, rng: random.Random) -> None:
        if rng.random() < 0.5:
            self.call("ListImages", pb.ListImagesRequest(page_size=50))
            return
        first = self.call("ListImages", pb.ListImagesRequest(page_size=20))
        if first is not None and first.next_page_token:
            next_page = pb.ListImagesRequest(page_size=20, page_token=first.next_page_token)
            self.call("ListImages", next_page)

    def add_location(self, rng: random.Random) -> None:
        if picked := self._pool.pick(rng):
            request = pb.AddLocationRequest(
                image_id=picked[0], location=new_location(rng), request_id=request_id()
            )
            self.keep(self.call("AddLocation", request))

    def remove_location(self, rng: random.Random) -> None:
        """Remove one location; now and then the last one, which is refused."""
        picked = self._pool.pick(rng)
        if picked is None or not picked[1]:
            return
        if len(picked[1]) < 2 and rng.random() > LAST_LOCATION_ATTEMPTS:
            self.add_location(rng)
            return
        request = pb.RemoveLocationRequest(
            image_id=picked[0], url=rng.choice(picked[1]), request_id=request_id()
        )
        self.keep(self.call("RemoveLocation", request))

    def reorder_locations(self, rng: random.Random) -> None:
        """Read, then put the same locations back in another order, if the image is unchanged."""
        picked = self._pool.pick(rng)
        if picked is None:
            return
        got = self.call("GetImage", pb.GetImageRequest(image_id=picked[0]))
        if got is None or not got.image.locations:
            return
        locations = list(got.image.locations)
        rng.shuffle(locations)
        request = pb.ReplaceLocationRequest(
            image_id=picked[0], locations=locations, etag=got.image.etag, request_id=request_id()
        )
        self.keep(self.call("ReplaceLocation", request))

    def create(self, rng: random.Random) -> str | None:
        """A new queued image; its id. Makes room in the pool by deleting one."""
        request = pb.CreateImageRequest(
            name=f"soak-{rng.randrange(10**6)}",
            disk_format=rng.choice(["qcow2", "raw"]),
            container_format="bare",
            visibility=rng.choice([pb.IMAGE_VISIBILITY_PRIVATE, pb.IMAGE_VISIBILITY_PUBLIC]),
            request_id=request_id(),
        )
        created = self.call("CreateImage", request)
        if victim := self._pool.evict(rng):
            self.call(
                "DeleteImage", pb.DeleteImageRequest(image_id=victim, request_id=request_id())
            )
        return None if created is None else str(created.image.id)

    def create_with_locations(self, rng: random.Random) -> None:
        if image_id := self.create(rng):
            request = pb.ReplaceLocationRequest(
                image_id=image_id,
                locations=[new_location(rng) for _ in range(rng.randint(1, 3))],
                request_id=request_id(),
            )
            self.keep(self.call("ReplaceLocation", request))

    def upload(self, rng: random.Random) -> None:
        if not (image_id := self.create(rng)):
            return
        if self.call("BeginUpload", pb.BeginUploadRequest(image_id=image_id)) is None:
            return
        self.keep(self.call("CompleteUpload", self.complete_request(image_id, rng)))

    def stage_and_import(self, rng: random.Random) -> None:
        if not (image_id := self.create(rng)):
            return
        if self.call("StageImage", pb.StageImageRequest(image_id=image_id)) is None:
            return
        if self.call("BeginImport", pb.BeginImportRequest(image_id=image_id)) is None:
            return
        self.keep(self.call("CompleteUpload", self.complete_request(image_id, rng)))

    def fail_upload(self, rng: random.Random) -> None:
        if not (image_id := self.create(rng)):
            return
        if self.call("BeginUpload", pb.BeginUploadRequest(image_id=image_id)) is None:
            return
        self.call("FailUpload", pb.FailUploadRequest(image_id=image_id, request_id=request_id()))
        self.call("DeleteImage", pb.DeleteImageRequest(image_id=image_id, request_id=request_id()))

    def deactivate_and_reactivate(self, rng: random.Random) -> None:
        if picked := self._pool.pick(rng):
            image_id = picked[0]
            self.call("DeactivateImage", pb.DeactivateImageRequest(image_id=image_id))
            self.keep(self.call("ReactivateImage", pb.ReactivateImageRequest(image_id=image_id)))

    @staticmethod
    def complete_request(image_id: str, rng: random.Random) -> pb.CompleteUploadRequest:
        return pb.CompleteUploadRequest(
            image_id=image_id,
            location=new_location(rng),
            size=rng.randint(1, 2**30),
            checksum=MD5,
            os_hash_algo="sha512",
            os_hash_value=SHA512,
            request_id=request_id(),
        )


def shown(rss: float | None) -> str:
    return "n/a" if rss is None else f"{rss:.1f} MiB"


@dataclasses.dataclass
class Server:
    """The server under load: where it listens, and its process when this script started it."""

    target: str
    pid: int | None
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None

    def stop(self) -> int | None:
        """SIGTERM and wait for the drain; the exit status (None when not ours)."""
        if self.process is None:
            return None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=STOP_SECONDS)

    def log_tail(self) -> str:
        if self.log is None:
            return ""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]


@contextlib.contextmanager
def server_for(args: argparse.Namespace) -> Iterator[Server]:
    """The server to load: --target, or `imageloc serve` on --database or a temporary SQLite."""
    if args.target:
        wait_serving(args.target, None)
        yield Server(target=args.target, pid=args.server_pid)
        return
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile() as log:
        database = args.database or f"sqlite:///{tmp}/soak.db"
        if not database.startswith("sqlite"):
            subprocess.run(
                [str(IMAGELOC), "db", "upgrade", "--database", database],
                check=True,
                stdout=subprocess.DEVNULL,
                timeout=START_SECONDS,
            )
        target = f"127.0.0.1:{free_port()}"
        process = subprocess.Popen(
            [
                str(IMAGELOC),
                "serve",
                "--listen",
                target,
                "--drain-seconds",
                "0",
                "--database",
                database,
                "--audit-log",
                f"{tmp}/audit.log",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        server = Server(target=target, pid=process.pid, process=process, log=log)
        try:
            wait_serving(target, process)
            yield server
        finally:
            if process.poll() is None:
                server.stop()


def seed(stub: pb_grpc.ImageServiceStub, pool: ImagePool, args: argparse.Namespace) -> None:
    """args.images active images for the load to work on; raise if any call failed."""
    stats = Stats()
    mix = Mix(stub, pool, stats, args.call_timeout)
    rng = random.Random(args.seed)
    for _ in range(args.images):  # bounded: one create and one replace each
        mix.create_with_locations(rng)
    if stats.refusals or stats.errors:
        raise RuntimeError(f"seeding failed: {counted(stats.refusals + stats.errors)}")


def work(mix: Mix, rng: random.Random, deadline: float, stop: threading.Event) -> None:
    """One client thread: operations back to back until the deadline."""
    while time.monotonic() < deadline and not stop.is_set():
        mix.run_one(rng)


@dataclasses.dataclass(frozen=True)
class Sample:
    """Progress at one moment of the run."""

    seconds: float
    calls: int
    refusals: int
    errors: int
    rss: float | None


def sample(stats: Stats, pid: int | None, started: float) -> Sample:
    calls, refusals, errors = stats.snapshot()
    return Sample(time.monotonic() - started, calls, refusals, errors, rss_mib(pid))


def print_progress(now: Sample, before: Sample) -> None:
    rate = (now.calls - before.calls) / max(now.seconds - before.seconds, 1e-9)
    print(
        f"[{now.seconds:6.1f}s] calls {now.calls:,} ({rate:,.0f}/s), refusals {now.refusals:,}, "
        f"errors {now.errors:,}, server RSS {shown(now.rss)}",
        flush=True,
    )


def load(args: argparse.Namespace, server: Server, stats: Stats) -> list[Sample]:
    """Run the threads for args.seconds, sampling progress every args.interval; the samples."""
    pool = ImagePool(capacity=args.images)
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ImageServiceStub(channel)
        seed(stub, pool, args)
        mix = Mix(stub, pool, stats, args.call_timeout)
        started = time.monotonic()
        samples = [sample(stats, server.pid, started)]
        print(
            f"start: calls {samples[0].calls:,}, errors {samples[0].errors:,}, "
            f"server RSS {shown(samples[0].rss)}",
            flush=True,
        )
        deadline = started + args.seconds
        stop = threading.Event()
        threads = [
            threading.Thread(
                target=work, args=(mix, random.Random(args.seed + n + 1), deadline, stop)
            )
            for n in range(args.concurrency)
        ]
        for thread in threads:
            thread.start()
        try:
            while (left := deadline - time.monotonic()) > 0:
                time.sleep(min(args.interval, left))
                samples.append(sample(stats, server.pid, started))
                print_progress(samples[-1], samples[-2])
        finally:
            stop.set()
            for thread in threads:  # each ends after its current operation, a few calls
                thread.join(timeout=args.call_timeout * 4)
    samples.append(sample(stats, server.pid, started))
    return samples


@dataclasses.dataclass(frozen=True)
class RssVerdict:
    """Whether the server's RSS levelled off: its growth over the second half of the run."""

    start: float | None
    half: float | None
    end: float | None
    tolerance: float

    @property
    def growth(self) -> float | None:
        return None if self.half is None or self.end is None else self.end - self.half

    @property
    def levelled(self) -> bool | None:
        return None if self.growth is None else self.growth <= self.tolerance

    def describe(self) -> str:
        if self.growth is None:
            return "RSS not measured (give --server-pid with --target)"
        verdict = "levelled off" if self.levelled else "still growing"
        return (
            f"RSS start {shown(self.start)}, half-way {shown(self.half)}, end {shown(self.end)}: "
            f"{self.growth:+.1f} MiB over the last half (tolerance {self.tolerance:.1f} MiB), "
            f"{verdict}"
        )


def rss_verdict(samples: list[Sample], tolerance_mib: float) -> RssVerdict:
    """Compare the sample nearest half-time with the last one; start is before the load."""
    half_time = samples[-1].seconds / 2
    half = min(samples, key=lambda s: abs(s.seconds - half_time))
    return RssVerdict(samples[0].rss, half.rss, samples[-1].rss, tolerance_mib)


def counted(counter: collections.Counter[str]) -> str:
    return ", ".join(f"{label} {n:,}" for label, n in counter.most_common()) or "none"


def report(
    samples: list[Sample], stats: Stats, verdict: RssVerdict, exit_status: int | None
) -> bool:
    """Print the end of the run; whether it passed."""
    end = samples[-1]
    rate = end.calls / max(end.seconds, 1e-9)
    print(
        f"end: calls {end.calls:,} ({rate:,.0f}/s over {end.seconds:.1f}s), errors {end.errors:,}, "
        f"refusals {end.refusals:,}, server RSS {shown(end.rss)}"
    )
    print(f"calls by RPC: {counted(stats.by_rpc)}")
    print(f"refusals (documented answers, not errors): {counted(stats.refusals)}")
    print(f"errors by code: {counted(stats.errors)}")
    print(verdict.describe())
    if exit_status is not None:
        print(f"server exit status after SIGTERM: {exit_status}")
    passed = not end.errors and verdict.levelled is not False and exit_status in (None, 0)
    print(f"verdict: {'PASS' if passed else 'FAIL'}")
    return passed


def store_name(args: argparse.Namespace) -> str:
    """The kind of database the server uses, as far as this script knows."""
    if args.target:
        return "the target's own"
    return str(args.database).split(":", 1)[0] if args.database else "sqlite (temporary)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--seconds", type=float, default=120.0, help="how long to load (default 120)"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--target", metavar="HOST:PORT", help="load a running server")
    parser.add_argument("--server-pid", type=int, help="with --target: its pid, to read its RSS")
    parser.add_argument("--database", metavar="URL", help="default: a temporary SQLite file")
    parser.add_argument("--images", type=int, default=48, help="images the load works on")
    parser.add_argument("--interval", type=float, help="seconds between progress lines")
    parser.add_argument("--call-timeout", type=float, default=10.0, help="deadline of each call")
    parser.add_argument(
        "--rss-tolerance-mib",
        type=float,
        default=8.0,
        help="RSS growth over the last half that still counts as levelled off",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the mix")
    args = parser.parse_args(argv)
    if args.interval is None:
        args.interval = min(max(args.seconds / 10, 1.0), 15.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stats = Stats()
    with server_for(args) as server:
        store = store_name(args)
        print(
            f"soak: {args.seconds:g}s, {args.concurrency} threads, store {store}, "
            f"server {server.target} pid {server.pid or 'unknown'}",
            flush=True,
        )
        samples = load(args, server, stats)
        exit_status = server.stop()
        if exit_status not in (None, 0):
            print(server.log_tail(), file=sys.stderr)
    passed = report(samples, stats, rss_verdict(samples, args.rss_tolerance_mib), exit_status)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
