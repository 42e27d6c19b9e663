"""What the benchmark and the soak share: free ports, waiting for a server, its RSS, and
the figures a load generator prints.

Imports grpc and the health stubs only; bench/run.py, bench/soak.py and the load
generators import it.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import subprocess
import time
from collections.abc import Mapping
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

START_SECONDS = 30.0


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def rss_mib(pid: int | None) -> float | None:
    """A process's resident set size in MiB, from /proc; None when unknown or gone."""
    if pid is None:
        return None
    with contextlib.suppress(OSError):
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def cpu_seconds(pids: list[int]) -> float:
    """The CPU time (user + system) the processes have used so far, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def wait_serving(target: str, process: subprocess.Popen[bytes] | None = None) -> None:
    """Return once health answers SERVING; raise after START_SECONDS or if process exits."""
    deadline = time.monotonic() + START_SECONDS
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                break
            with contextlib.suppress(grpc.RpcError):
                answer = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.1)
    raise RuntimeError(f"no server answered SERVING at {target}")


def load_figures(
    workload: str, *, operations: int, latencies: list[float], errors: Mapping[str, int],
    elapsed: float,
) -> dict[str, Any]:  # fmt: skip
    """What a load generator prints: throughput, latency percentiles of its calls, errors."""
    latencies = sorted(latencies)
    done = len(latencies)

    def percentile(q: float) -> float:
        return 1000 * latencies[min(done - 1, int(q * done))] if done else float("nan")

    return {
        "workload": workload,
        "operations": operations,
        "calls_per_s": done / elapsed,
        "operations_per_s": operations / elapsed,
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "errors": dict(errors),
        "seconds": elapsed,
    }
