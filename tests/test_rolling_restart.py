"""A rolling restart under load: SIGTERM answers every call OK, its refusal, or UNAVAILABLE.

Never CANCELLED or INTERNAL: the clients retry only UNAVAILABLE, so either would fail a
caller during every restart. Repeated, on each backend, to catch a race that shows in a
third of the runs.
"""

from __future__ import annotations

import collections
import queue
import signal
import threading

import grpc

from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

from processes import start_server
from support import location, migrate

REPETITIONS = 20
IMAGES = 200
#: AddLocation calls on each image: enough that the calls outlast the signal on any machine.
CALLS_PER_IMAGE = 8
CLIENT_THREADS = 32
#: SIGTERM once this many calls are answered (or 0.3 s after the first, if sooner).
SIGNAL_AFTER_CALLS = 200
SIGNAL_AFTER_SECONDS = 0.3
#: The answers a stopping server may give: done, refused by a rule, or go elsewhere.
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAVAILABLE,
}


def one_restart(database_url: str) -> collections.Counter[grpc.StatusCode]:
    """1600 AddLocation calls on 200 images from 32 threads, SIGTERM as they run: the codes."""
    server = start_server(
        database_url, env={"IMAGELOC_DRAIN_SECONDS": "0", "IMAGELOC_GRACE_SECONDS": "10"}
    )
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.ImageServiceStub(channel)
            work: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()
            ids = [
                stub.CreateImage(
                    pb.CreateImageRequest(name=f"r{i}", disk_format="raw", container_format="bare"),
                    timeout=10,
                ).image.id
                for i in range(IMAGES)
            ]
            for n in range(CALLS_PER_IMAGE):
                for image_id in ids:
                    work.put((image_id, n))
        codes: collections.Counter[grpc.StatusCode] = collections.Counter()
        lock = threading.Lock()
        first_call = threading.Event()
        enough_answered = threading.Event()

        def client() -> None:
            with grpc.insecure_channel(server.target) as channel:
                stub = pb_grpc.ImageServiceStub(channel)
                while True:
                    try:
                        image_id, n = work.get_nowait()
                    except queue.Empty:
                        return
                    first_call.set()
                    request = pb.AddLocationRequest(
                        image_id=image_id,
                        location=location(f"https://store.example/{image_id}/{n}"),
                    )
                    try:
                        stub.AddLocation(request, timeout=10)
                        code = grpc.StatusCode.OK
                    except grpc.RpcError as error:
                        code = error.code()
                    with lock:
                        codes[code] += 1
                        if sum(codes.values()) >= SIGNAL_AFTER_CALLS:
                            enough_answered.set()

        threads = [threading.Thread(target=client) for _ in range(CLIENT_THREADS)]
        for thread in threads:
            thread.start()
        assert first_call.wait(10)
        enough_answered.wait(SIGNAL_AFTER_SECONDS)
        server.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=30)
        status = server.process.wait(timeout=20)
    finally:
        server.kill()
    assert status == 0, server.stderr()
    assert sum(codes.values()) == IMAGES * CALLS_PER_IMAGE
    return codes


def test_sigterm_under_load_answers_no_call_cancelled(database_url: str) -> None:
    migrate(database_url)
    outcomes = [one_restart(database_url) for _ in range(REPETITIONS)]
    wrong = [dict(codes) for codes in outcomes if set(codes) - ALLOWED]
    assert not wrong, f"{len(wrong)} of {REPETITIONS} restarts answered a call wrongly: {wrong}"
    # The stop came while calls were still arriving, or the test would prove nothing.
    assert any(codes[grpc.StatusCode.UNAVAILABLE] for codes in outcomes), outcomes
