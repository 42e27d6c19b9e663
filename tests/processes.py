"""Real `imageloc serve` processes for tests: start on a free port, wait for health, stop or kill.

Also a fresh database per backend that lives as long as the caller wants (a module, say).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support import migrate

IMAGELOC = pathlib.Path(sys.executable).with_name("imageloc")
#: Test servers stop at once unless a test asks for a drain delay.
TEST_ENV = {"IMAGELOC_DRAIN_SECONDS": "0"}
START_SECONDS = 30.0
STOP_SECONDS = 20.0


class ServerProcess:
    """One `imageloc serve` child process listening on target; its stderr kept for messages."""

    def __init__(self, process: subprocess.Popen[bytes], target: str, log: IO[bytes]) -> None:
        self.process = process
        self.target = target
        self._log = log
        self._stderr = ""

    def stop(self) -> int:
        """SIGTERM, then wait for the drain; the exit status (SIGKILL after STOP_SECONDS)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
        return self._ended()

    def kill(self) -> None:
        """SIGKILL: no drain, no cleanup, as a crash."""
        if self.process.poll() is None:
            self.process.kill()
        self._ended()

    def stderr(self) -> str:
        """The end of what the process wrote to stderr so far."""
        if self._log.closed:
            return self._stderr
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def _ended(self) -> int:
        status = self.process.wait(timeout=STOP_SECONDS)
        if not self._log.closed:
            self._stderr = self.stderr()
            self._log.close()
        return status

    def wait_serving(self) -> None:
        """Return once health answers SERVING; fail if that takes over START_SECONDS."""
        deadline = time.monotonic() + START_SECONDS
        with grpc.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                try:
                    answer = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        self.kill()
        raise AssertionError(f"{self.target} never answered SERVING\n{self.stderr()}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def launch(database_url: str, *, env: Mapping[str, str] | None = None) -> ServerProcess:
    """Start `imageloc serve` on a free port without waiting for it."""
    target = f"127.0.0.1:{free_port()}"
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed when the process ends
    process = subprocess.Popen(
        [str(IMAGELOC), "serve", "--listen", target, "--database", database_url],
        env={**os.environ, **TEST_ENV, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    return ServerProcess(process, target, log)


def start_server(database_url: str, *, env: Mapping[str, str] | None = None) -> ServerProcess:
    """A serving `imageloc serve` on database_url; a PostgreSQL one must be migrated first."""
    server = launch(database_url, env=env)
    server.wait_serving()
    return server


@contextlib.contextmanager
def replicas(
    database_url: str, n: int, *, env: Mapping[str, str] | None = None
) -> Iterator[list[ServerProcess]]:
    """n serving processes on one (migrated) database, stopped with SIGTERM on exit."""
    migrate(database_url)
    started = [launch(database_url, env=env) for _ in range(n)]
    try:
        for server in started:
            server.wait_serving()
        yield started
    finally:
        statuses = {server.target: server.stop() for server in started}
    assert set(statuses.values()) == {0}, f"replicas did not drain cleanly: {statuses}"
