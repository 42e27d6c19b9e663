"""The benchmark runs: its fast setting proves the script works. It asserts nothing about speed."""

from __future__ import annotations

import pathlib
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "run.py"


def test_the_benchmark_runs_every_workload_and_prints_the_ceiling_ratio() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--fast"], capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ceiling (empty RPC, bare grpc.aio server)" in done.stdout
    for workload in ("GetImage", "ListImages", "AddLocation+RemoveLocation", "ReplaceLocation",
                     "mix 90/10"):  # fmt: skip
        assert f"| {workload} |" in done.stdout
    assert "server RSS" in done.stdout
    # One table per connection shape: one channel (the common caller) and four.
    assert "on 1 channel;" in done.stdout
    assert "on 4 channels;" in done.stdout


def test_the_benchmark_runs_through_envoy_beside_direct_calls() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--fast", "--via-envoy", "--watchers", "0",
         "--workloads", "GetImage", "--channels", "1"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Through Envoy" in done.stdout
    assert "| GetImage |" in done.stdout.split("Through Envoy")[1]


def rows_without_errors(flag: str, title: str) -> None:
    """Run the benchmark --fast with flag; under title, GetImage and the location cycle
    have a row each, and its last column (errors) is 0."""
    done = subprocess.run(
        [sys.executable, str(BENCH), "--fast", flag, "--watchers", "0",
         "--workloads", "GetImage", "AddLocation+RemoveLocation", "--channels", "1"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    table = done.stdout.split(title)[1]
    for workload in ("GetImage", "AddLocation+RemoveLocation"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {workload} |"))
        assert row.endswith("| 0 |"), row


def test_the_benchmark_runs_the_glance_endpoint_beside_grpc() -> None:
    rows_without_errors("--glance", "Glance Image API v2 over HTTP")


def test_the_benchmark_prints_the_cost_of_metrics_on_against_off() -> None:
    rows_without_errors("--metrics", "Prometheus metrics (--metrics-listen) on against off")


def test_the_scale_table_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--fast", "--scale", "100,1000"], capture_output=True,
        text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| 1,000 |" in done.stdout
