"""The benchmark: start the server (or target one), load it from a separate process, print figures.

`python bench/run.py` measures the ceiling (an empty RPC on a bare grpc.aio server, same load
generator), then each workload against imageloc, and prints calls/s, p50, p99, errors and the
ratio to the ceiling. `--scale` prints GetImage/ListImages cost as the store grows instead.
Every load is bounded by --seconds and talks to loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc

from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

from harness import cpu_seconds, free_port, rss_mib, wait_serving

HERE = pathlib.Path(__file__).resolve().parent
IMAGELOC = pathlib.Path(sys.executable).with_name("imageloc")
WORKLOADS = ["GetImage", "ListImages", "AddLocation+RemoveLocation", "ReplaceLocation", "mix 90/10"]
SEED_URLS = ("https://store.example/a.img", "rbd://fsid/pool/b/snap", "s3://bucket/c.img")


@contextlib.contextmanager
def processes(commands: list[list[str]], env: dict[str, str]) -> Iterator[list[int]]:
    """Run commands in the background; SIGTERM (then SIGKILL) them on exit."""
    started = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL) for c in commands]
    try:
        yield [p.pid for p in started]
    finally:
        for process in started:
            process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def load(
    target: str, workload: str, args: argparse.Namespace, ids_file: str, token_file: str = "",
    *, channels: int | None = None, rate: float = 0.0,
) -> dict[str, Any]:  # fmt: skip
    """Run the load generator in its own process (over channels connections, by default
    the last --channels; rate > 0: paced at rate operations per second) and return its
    figures. An http:// target is the Glance endpoint: bench/http_load.py loads it."""
    if target.startswith("http://"):
        command = [
            sys.executable, str(HERE / "http_load.py"), "--target", target,
            "--workload", workload, "--concurrency", str(args.concurrency),
            "--seconds", str(args.seconds), "--image-ids", ids_file,
        ]  # fmt: skip
        done = subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=args.seconds + 60
        )
        figures: dict[str, Any] = json.loads(done.stdout)
        return figures
    command = [
        sys.executable, str(HERE / "load.py"), "--target", target, "--workload", workload,
        "--concurrency", str(args.concurrency), "--seconds", str(args.seconds),
        "--channels", str(channels or args.channels[-1]), "--image-ids", ids_file,
    ]  # fmt: skip
    if token_file:
        command += ["--token-file", token_file]
    if rate:
        command += ["--rate", str(rate)]
    done = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=args.seconds + 60
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def seed(target: str, count: int, token: str = "") -> list[str]:
    """count active images with three locations each, through the API."""
    ids = []
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.ImageServiceStub(channel)
        for i in range(count):
            request = pb.CreateImageRequest(
                name=f"bench-{i}", disk_format="raw", container_format="bare"
            )
            image = stub.CreateImage(request, metadata=metadata).image
            locations = [pb.Location(url=f"{url}?{i}") for url in SEED_URLS]
            replace = pb.ReplaceLocationRequest(image_id=image.id, locations=locations)
            stub.ReplaceLocation(replace, metadata=metadata)
            ids.append(image.id)
    return ids


#: The benchmark's policy file: the owner's members may remove locations too.
OWNERS_REMOVE_LOCATIONS = (
    '"delete_image_location": "rule:context_is_admin or'
    ' (role:member and project_id:%(project_id)s)"\n'
)


def dev_credentials(tmp: str) -> tuple[list[str], str]:
    """`serve` flags for JWT auth with fresh dev keys, and a file with a member's token.

    Glance lets only admins remove locations; the location workload removes what it
    adds, so the policy file lets the owner's members do it, as an operator may.
    """
    keys = pathlib.Path(tmp, "keys")
    subprocess.run(
        [str(IMAGELOC), "auth", "dev-keys", "--out", str(keys)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    token = subprocess.run(
        [str(IMAGELOC), "auth", "dev-token", "--key", str(keys / "private.pem"),
         "--project", "bench", "--roles", "member,reader", "--ttl", "1h"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    token_file = pathlib.Path(tmp, "token")
    token_file.write_text(token)
    policy_file = pathlib.Path(tmp, "policy.yaml")
    policy_file.write_text(OWNERS_REMOVE_LOCATIONS)
    flags = [
        "--auth", "jwt", "--jwks-file", str(keys / "jwks.json"),
        "--token-issuer", "imageloc-dev", "--token-audience", "imageloc",
        "--policy-file", str(policy_file),
    ]  # fmt: skip
    return flags, str(token_file)


def machine() -> str:
    return (
        f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, grpcio {grpc.__version__}"
    )


def throughput(args: argparse.Namespace) -> int:
    args.images = max(args.images, args.concurrency)  # writers each get images of their own
    env = dict(os.environ)
    errors = 0
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        ids_file = str(pathlib.Path(tmp, "ids"))
        pathlib.Path(ids_file).write_text(str(uuid.uuid4()) + "\n")
        ceiling_target = f"127.0.0.1:{free_port()}"
        with processes(
            [[sys.executable, str(HERE / "ceiling.py"), "--listen", ceiling_target]], env
        ):
            wait_for_port(ceiling_target)
            ceilings = {
                channels: load(ceiling_target, "empty", args, ids_file, channels=channels)
                for channels in args.channels
            }
        modes: dict[str, tuple[list[str], str]] = {"none": ([], "")}
        if args.auth == "jwt":
            modes["jwt"] = dev_credentials(tmp)
        if args.metrics:  # port 0: each of --processes picks its own
            modes["metrics"] = (["--metrics-listen", "127.0.0.1:0"], "")
        servers = {
            label: stack.enter_context(started(args, tmp, env, label, mode))
            for label, mode in modes.items()
        }
        # Envoy in front of the plain servers: the same load through it.
        envoy = stack.enter_context(envoy_in_front(servers["none"].target, tmp, env)) if (
            args.via_envoy
        ) else None  # fmt: skip
        targets = {label: server.target for label, server in servers.items()}
        if envoy is not None:
            targets["envoy"] = envoy
        if args.glance:
            targets["glance"] = f"http://{servers['none'].glance}"
        shapes: dict[int, dict[str, list[dict[str, Any]]]] = {}
        for channels in args.channels:
            results: dict[str, list[dict[str, Any]]] = {label: [] for label in targets}
            for workload in args.workloads:
                rounds: dict[str, list[dict[str, Any]]] = {label: [] for label in targets}
                for number in range(args.rounds):
                    # Alternate the order, so that drift of the machine is shared alike.
                    order = list(targets) if number % 2 == 0 else list(reversed(targets))
                    for label in order:
                        if label == "glance" and workload not in GLANCE_WORKLOADS:
                            continue
                        server = servers.get(label, servers["none"])
                        rounds[label].append(
                            load(
                                targets[label], workload, args, server.ids_file,
                                server.token_file, channels=channels,
                            )
                        )  # fmt: skip
                for label, figures in rounds.items():
                    if figures:
                        results[label].append(combined(figures))
            shapes[channels] = results
        plain = servers["none"]
        rss_end = [rss_mib(pid) for pid in plain.pids]
        watched = measure_watchers(args, plain) if args.watchers else None
    for channels, results in shapes.items():
        report(
            args, plain.database, ceilings[channels], results=results["none"], channels=channels,
            rss_start=plain.rss_start, rss_end=rss_end,
        )  # fmt: skip
        if "jwt" in results:
            report_against(
                results["none"], results["jwt"],
                title="authentication and authorization (--auth jwt, a member's token) against"
                " none", off="auth none", on="auth jwt", short="jwt / none",
            )  # fmt: skip
        if "metrics" in results:
            report_against(
                results["none"], results["metrics"],
                title="Prometheus metrics (--metrics-listen) on against off", off="metrics off",
                on="metrics on", short="on / off",
            )  # fmt: skip
        if "envoy" in results:
            report_envoy(results["none"], results["envoy"])
        if "glance" in results:
            report_glance(results["none"], results["glance"])
        errors += sum(sum(r["errors"].values()) for run in results.values() for r in run)
        print()
    if watched is not None:
        errors += report_watchers(args, watched)
    return 1 if errors else 0


@contextlib.contextmanager
def envoy_in_front(target: str, tmp: str, env: dict[str, str]) -> Iterator[str]:
    """Envoy (deploy/, as `imageloc cluster` runs it) in front of target; its address."""
    from imageloc.deploy.envoy_config import EnvoyConfig, render
    from imageloc.deploy.envoy_process import all_healthy, envoy_command, wait_until

    config = EnvoyConfig(
        replicas=(target,), listen=f"127.0.0.1:{free_port()}", admin=f"127.0.0.1:{free_port()}"
    )
    path = pathlib.Path(tmp, "envoy.yaml")
    path.write_text(render(config, written_by="bench/run.py --via-envoy"))
    with processes([envoy_command(path)], env):
        wait_until(config.admin, all_healthy(config.replicas), timeout=30)
        yield config.listen


def report_envoy(direct: list[dict[str, Any]], proxied: list[dict[str, Any]]) -> None:
    """Each workload through Envoy beside the same run's direct calls."""
    print()
    print("Through Envoy (deploy/envoy_config.py, one upstream), beside direct calls:")
    print()
    print("| workload | direct calls/s | via Envoy calls/s | via / direct | via p99 ms | errors |")
    print("|---|---|---|---|---|---|")
    for plain, via in zip(direct, proxied, strict=True):
        errors = ", ".join(f"{k} {v}" for k, v in via["errors"].items()) or "0"
        print(
            f"| {plain['workload']} | {plain['calls_per_s']:,.0f} | {via['calls_per_s']:,.0f} "
            f"| {via['calls_per_s'] / plain['calls_per_s']:.2f} | {via['p99_ms']:.1f} "
            f"| {errors} |"
        )


#: The workloads the Glance endpoint runs too (bench/http_load.py), and Glance 33's own
#: rates measured on this kind of machine: GETs/s, and add+remove cycles/s.
GLANCE_WORKLOADS = ("GetImage", "AddLocation+RemoveLocation")
GLANCE_33_RATES = {"GetImage": (62.0, 100.0), "AddLocation+RemoveLocation": (7.8, 13.0)}


def report_glance(grpc_figures: list[dict[str, Any]], http: list[dict[str, Any]]) -> None:
    """The Glance endpoint's throughput beside the same work over gRPC, and beside Glance 33."""
    print()
    print("Glance Image API v2 over HTTP (serve --glance-listen), beside the same work over gRPC:")
    print()
    print(
        "| workload | gRPC ops/s | HTTP ops/s | HTTP / gRPC | HTTP p99 ms "
        "| HTTP / Glance 33 (at its best) | errors |"
    )
    print("|---|---|---|---|---|---|---|")
    by_name = {figures["workload"]: figures for figures in grpc_figures}
    for over_http in http:
        name = over_http["workload"]
        direct = by_name[name]
        best = GLANCE_33_RATES[name][1]
        errors = ", ".join(f"{k} {v}" for k, v in over_http["errors"].items()) or "0"
        print(
            f"| {name} | {direct['operations_per_s']:,.0f} | {over_http['operations_per_s']:,.0f} "
            f"| {over_http['operations_per_s'] / direct['operations_per_s']:.2f} "
            f"| {over_http['p99_ms']:.1f} | {over_http['operations_per_s'] / best:,.0f}x "
            f"| {errors} |"
        )
    print("(an add+remove operation is one cycle: two calls; Glance 33 did 7.8-13 cycles/s")
    print(" and 62-100 GETs/s on this kind of machine)")


WATCHED_WORKLOAD = "AddLocation+RemoveLocation"


def measure_watchers(args: argparse.Namespace, server: Started) -> dict[str, Any]:
    """The location writes alone and with --watchers streams open on every change, in
    alternating rounds; the latency again with the writes paced at --watch-rate; then
    the server's RSS with 1,000 idle streams."""
    alone: list[dict[str, Any]] = []
    beside: list[dict[str, Any]] = []
    watching: list[dict[str, Any]] = []
    cpu = {"alone": 0.0, "beside": 0.0}
    for _ in range(args.rounds):
        used = cpu_seconds(server.pids)
        alone.append(load(server.target, WATCHED_WORKLOAD, args, server.ids_file))
        cpu["alone"] += cpu_seconds(server.pids) - used
        with watchers(server.target, args.watchers, seconds=args.seconds + 2) as done:
            used = cpu_seconds(server.pids)
            beside.append(load(server.target, WATCHED_WORKLOAD, args, server.ids_file))
            cpu["beside"] += cpu_seconds(server.pids) - used
        watching.append(done())
    # The latency of a server that keeps up: with the writes as fast as they go, an event
    # waits behind the calls queued at the server, as every call there does.
    with watchers(server.target, args.watchers, seconds=args.seconds + 2) as done:
        paced_load = load(
            server.target, WATCHED_WORKLOAD, args, server.ids_file, rate=args.watch_rate / 2
        )
    paced = done()
    rss_before = [rss_mib(pid) for pid in server.pids]
    with watchers(server.target, IDLE_STREAMS, seconds=3, idle=True) as idle:
        time.sleep(1)
        rss_idle = [rss_mib(pid) for pid in server.pids]
    idle_result = idle()
    calls = {
        "alone": sum(r["calls_per_s"] for r in alone) * args.seconds,
        "beside": sum(r["calls_per_s"] for r in beside) * args.seconds,
    }
    return {
        "alone": combined(alone),
        "beside": combined(beside),
        "cpu_us_per_write": {k: cpu[k] / max(calls[k], 1) * 1e6 for k in cpu},
        "events_per_s": sum(w["events_per_s"] for w in watching) / len(watching),
        "responses_per_s": sum(w["responses_per_s"] for w in watching) / len(watching),
        "p50_ms": sum(w["p50_ms"] for w in watching) / len(watching),
        "p99_ms": max(w["p99_ms"] for w in watching),
        "paced": paced,
        "paced_writes_per_s": paced_load["calls_per_s"],
        "paced_load_errors": sum(paced_load["errors"].values()),
        "errors": sum(sum(w["errors"].values()) for w in [*watching, idle_result]),
        "idle_open": idle_result["watchers"] - sum(idle_result["errors"].values()),
        "rss_before": rss_before,
        "rss_idle": rss_idle,
    }


#: How many idle streams the memory figure holds open.
IDLE_STREAMS = 1000


@contextlib.contextmanager
def watchers(target: str, count: int, *, seconds: float, idle: bool = False) -> Iterator[Any]:
    """count streams in a process of their own, open when the block starts; the block gets
    a function that waits for the process and returns its figures."""
    command = [
        sys.executable, str(HERE / "watchers.py"), "--target", target,
        "--watchers", str(count), "--seconds", str(seconds), *(["--idle"] if idle else []),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    process.stdout.readline()  # {"open": n}: every stream has its first response

    def done() -> dict[str, Any]:
        out, _ = process.communicate(timeout=seconds + 60)
        result: dict[str, Any] = json.loads(out)
        return result

    try:
        yield done
    finally:
        if process.poll() is None:
            process.wait(timeout=seconds + 60)


def report_watchers(args: argparse.Namespace, watched: dict[str, Any]) -> int:
    """Print the watch figures; the number of errors."""
    alone, beside = watched["alone"], watched["beside"]
    print()
    print(
        f"WatchImages: {args.watchers} watchers of every image while {WATCHED_WORKLOAD} runs"
        f" ({args.rounds} alternating rounds):"
    )
    print()
    print("| figure | value |")
    print("|---|---|")
    print(f"| location writes/s, no watchers | {alone['calls_per_s']:,.0f} |")
    print(f"| location writes/s, {args.watchers} watchers | {beside['calls_per_s']:,.0f} |")
    print(f"| with / without | {beside['calls_per_s'] / alone['calls_per_s']:.2f} |")
    per_write = watched["cpu_us_per_write"]
    print(
        f"| server CPU per location write, without / with watchers | {per_write['alone']:.0f}"
        f" / {per_write['beside']:.0f} us (ratio {per_write['alone'] / per_write['beside']:.2f}) |"
    )
    print(
        f"| events delivered/s (all watchers), in responses/s | {watched['events_per_s']:,.0f},"
        f" in {watched['responses_per_s']:,.0f} |"
    )
    print(
        f"| commit-to-event latency p50 / p99 | {watched['p50_ms']:.1f} / "
        f"{watched['p99_ms']:.1f} ms |"
    )
    paced = watched["paced"]
    print(
        f"| commit-to-event latency p50 / p99, writes paced at {args.watch_rate:,.0f}/s"
        f" ({watched['paced_writes_per_s']:,.0f}/s done) | {paced['p50_ms']:.1f} /"
        f" {paced['p99_ms']:.1f} ms |"
    )
    before = ", ".join(f"{r:.0f}" for r in watched["rss_before"] if r is not None)
    idle = ", ".join(f"{r:.0f}" for r in watched["rss_idle"] if r is not None)
    print(f"| server RSS, {watched['idle_open']:,} idle streams open | {before} -> {idle} MiB |")
    errors = int(watched["errors"]) + int(sum(beside["errors"].values()))
    errors += int(sum(paced["errors"].values())) + int(watched["paced_load_errors"])
    print(f"| errors | {errors} |")
    return errors


def combined(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One workload's figures over its rounds: mean rates, the worst p99, all errors."""
    errors: dict[str, int] = {}
    for figures in rounds:
        for code, count in figures["errors"].items():
            errors[code] = errors.get(code, 0) + count
    return rounds[0] | {
        "calls_per_s": sum(r["calls_per_s"] for r in rounds) / len(rounds),
        "p50_ms": sum(r["p50_ms"] for r in rounds) / len(rounds),
        "p99_ms": max(r["p99_ms"] for r in rounds),
        "errors": errors,
    }


@dataclasses.dataclass
class Started:
    """Serving, seeded imageloc processes of one auth mode."""

    target: str
    database: str
    ids_file: str
    token_file: str
    pids: list[int]
    rss_start: list[float | None]
    glance: str = ""  # host:port of the Glance endpoint, with --glance


@contextlib.contextmanager
def started(
    args: argparse.Namespace, tmp: str, env: dict[str, str], label: str,
    mode: tuple[list[str], str],
) -> Iterator[Started]:  # fmt: skip
    """Start the servers (with mode's auth flags), seed them, and yield them serving."""
    auth, token_file = mode
    database = args.database or f"sqlite:///{tmp}/bench-{label}.db"
    target = args.target or f"127.0.0.1:{free_port()}"
    server = [
        str(IMAGELOC), "serve", "--listen", target, "--drain-seconds", "0",
        "--database", database, "--audit-log", str(pathlib.Path(tmp, f"audit-{label}.log")),
        *auth,
    ]  # fmt: skip
    glance = f"127.0.0.1:{free_port()}" if args.glance and label == "none" else ""
    if glance:
        server += ["--glance-listen", glance]
    servers = [] if args.target else [server] * args.processes
    if servers:  # as an operator would: migrate, then start the servers
        subprocess.run(
            [str(IMAGELOC), "db", "upgrade", "--database", database],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    token = pathlib.Path(token_file).read_text().strip() if token_file else ""
    ids_file = str(pathlib.Path(tmp, f"ids-{label}"))
    with processes(servers, env) as pids:
        wait_serving(target)
        ids = seed(target, args.images, token)
        pathlib.Path(ids_file).write_text("\n".join(ids) + "\n")
        yield Started(
            target, database, ids_file, token_file, pids, [rss_mib(p) for p in pids], glance
        )


def report_against(
    plain: list[dict[str, Any]], other: list[dict[str, Any]], *, title: str, off: str, on: str,
    short: str,
) -> None:  # fmt: skip
    """Each workload's throughput with a feature on (--auth jwt, metrics) as a ratio of the
    same without, measured in the same run."""
    print()
    print(f"{title}:")
    print()
    print(f"| workload | calls/s, {off} | calls/s, {on} | {short} | p99 ms, {on} | errors, {on} |")
    print("|---|---|---|---|---|---|")
    for without, with_it in zip(plain, other, strict=True):
        ratio = with_it["calls_per_s"] / without["calls_per_s"]
        errors = ", ".join(f"{k} {v}" for k, v in sorted(with_it["errors"].items())) or "0"
        print(
            f"| {without['workload']} | {without['calls_per_s']:,.0f} "
            f"| {with_it['calls_per_s']:,.0f} | {ratio:.2f} | {with_it['p99_ms']:.1f} "
            f"| {errors} |"
        )


def wait_for_port(target: str, seconds: float = 30) -> None:
    host, port = target.rsplit(":", 1)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), 1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {target}")


def report(
    args: argparse.Namespace, database: str, ceiling: dict[str, Any], *,
    results: list[dict[str, Any]], channels: int, rss_start: list[float | None],
    rss_end: list[float | None],
) -> None:  # fmt: skip
    store = database.split(":", 1)[0]
    print(f"# imageloc benchmark, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {machine()}")
    print(
        f"store: {store}; server processes: {args.processes}; calls in flight: "
        f"{args.concurrency} on {channels} channel{'s' if channels > 1 else ''}; "
        f"{args.seconds:g} s per workload; "
        f"{args.images} images seeded"
    )
    print(f"ceiling (empty RPC, bare grpc.aio server): {ceiling['calls_per_s']:,.0f} calls/s")
    # Little's law: a closed loop of N calls in flight waits N / throughput on average.
    print(
        f"mean latency at {args.concurrency} in flight = {args.concurrency} / calls/s "
        f"(the ceiling's: {1000 * args.concurrency / ceiling['calls_per_s']:.1f} ms)"
    )
    print()
    print("| workload | calls/s | ratio to ceiling | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|")
    for r in [{**ceiling, "workload": "ceiling (empty RPC)"}, *results]:
        ratio = r["calls_per_s"] / ceiling["calls_per_s"]
        errors = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "0"
        print(
            f"| {r['workload']} | {r['calls_per_s']:,.0f} | {ratio:.2f} | {r['p50_ms']:.1f} "
            f"| {r['p99_ms']:.1f} | {errors} |"
        )
    print()
    shown = ", ".join(
        f"{a or float('nan'):.0f} -> {b or float('nan'):.0f} MiB"
        for a, b in zip(rss_start, rss_end, strict=True)
    )
    print(f"server RSS (start -> end, per process): {shown or 'not measured (--target)'}")


def scale(args: argparse.Namespace) -> int:
    """GetImage and ListImages cost per call as the store grows, seeded straight into SQL."""
    from imageloc.server.store import SqlStore
    from imageloc.server.store.tables import image_locations, images

    sizes = [int(size) for size in args.scale.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        database = args.database or f"sqlite:///{tmp}/scale.db"
        store = SqlStore(database)
        store.upgrade()
        target = f"127.0.0.1:{free_port()}"
        seeded = 0
        now = datetime.datetime.now(datetime.UTC)
        print(f"# imageloc scale, {machine()}, store {database.split(':', 1)[0]}")
        print()
        print(
            "| images | seed s | GetImage ms/call | ListImages (100) ms/call "
            "| ListImages (100) by name ms/call |"
        )
        print("|---|---|---|---|---|")
        for size in sizes:
            started = time.monotonic()
            sample = bulk_seed(store, images, image_locations, start=seeded, stop=size, now=now)
            seeded = size
            seed_s = time.monotonic() - started
            servers = [
                [
                    str(IMAGELOC),
                    "serve",
                    "--listen",
                    target,
                    "--drain-seconds",
                    "0",
                    "--database",
                    database,
                ]
            ]
            with processes(servers, dict(os.environ)):
                wait_serving(target)
                get_ms, list_ms, by_name_ms = per_call(target, sample, calls=args.calls)
            print(f"| {size:,} | {seed_s:.1f} | {get_ms:.2f} | {list_ms:.2f} | {by_name_ms:.2f} |")
        store.dispose()
    return 0


def bulk_seed(
    store: Any, images: Any, image_locations: Any, *, start: int, stop: int,
    now: datetime.datetime,
) -> list[str]:  # fmt: skip
    """Insert images start..stop-1 (one location each) in large batches; a sample of ids."""
    batch = 20_000
    sample: list[str] = []
    with store.engine.begin() as connection:
        for first in range(start, stop, batch):
            rows, locations = [], []
            for i in range(first, min(stop, first + batch)):
                image_id = str(uuid.UUID(int=i + 1))
                moment = now - datetime.timedelta(microseconds=i)
                rows.append({
                    "id": image_id, "name": f"scale-{i}", "status": "active", "size": 1,
                    "checksum": "", "os_hash_algo": "", "os_hash_value": "", "disk_format": "raw",
                    "container_format": "bare", "visibility": "private", "owner": "",
                    "protected": False, "created_at": moment, "updated_at": moment, "revision": 1,
                })  # fmt: skip
                locations.append(
                    {"image_id": image_id, "position": 0, "url": f"{SEED_URLS[0]}?{i}",
                     "metadata": {}}
                )  # fmt: skip
                if i % 997 == 0:
                    sample.append(image_id)
            connection.execute(images.insert(), rows)
            connection.execute(image_locations.insert(), locations)
    return sample or [str(uuid.UUID(int=start + 1))]


def per_call(target: str, sample: list[str], *, calls: int) -> tuple[float, float, float]:
    """Mean ms per sequential GetImage and ListImages(page_size=100) call, newest first
    and by name (the keyset of another index), each paging onward with its token."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.ImageServiceStub(channel)
        stub.GetImage(pb.GetImageRequest(image_id=sample[0]))  # warm up
        started = time.perf_counter()
        for i in range(calls):
            stub.GetImage(pb.GetImageRequest(image_id=sample[i % len(sample)]))
        get_ms = 1000 * (time.perf_counter() - started) / calls
        pages = []
        for order_by in ("", "name"):
            token = ""
            started = time.perf_counter()
            for _ in range(calls):
                request = pb.ListImagesRequest(page_size=100, page_token=token, order_by=order_by)
                token = stub.ListImages(request).next_page_token
            pages.append(1000 * (time.perf_counter() - started) / calls)
    return get_ms, pages[0], pages[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database", help="SQLAlchemy URL (default: a temporary SQLite file)")
    parser.add_argument("--target", help="load a running server instead of starting one")
    parser.add_argument("--processes", type=int, default=1, help="server processes")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight")
    parser.add_argument(
        "--channels",
        type=int,
        nargs="+",
        default=[1, 4],
        help="client connections; each count is a run of its own, with a table of its own",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per workload")
    parser.add_argument("--images", type=int, default=1000, help="images seeded")
    parser.add_argument("--workloads", nargs="+", default=WORKLOADS, choices=WORKLOADS)
    parser.add_argument("--fast", action="store_true", help="seconds, to prove it works (CI)")
    parser.add_argument("--scale", help="comma-separated store sizes, e.g. 1000,1000000")
    parser.add_argument("--calls", type=int, default=500, help="calls per size with --scale")
    parser.add_argument(
        "--auth",
        choices=("none", "jwt"),
        default="none",
        help="jwt: also serve with JWT auth and print each workload's ratio to the run without",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="also serve with Prometheus metrics on and print each workload's ratio to the"
        " run without",
    )
    parser.add_argument(
        "--glance",
        action="store_true",
        help="also serve the Glance endpoint and run GetImage and the location cycle over HTTP",
    )
    parser.add_argument(
        "--via-envoy",
        action="store_true",
        help="also run every workload through Envoy in front of the servers, beside direct",
    )
    parser.add_argument(
        "--watchers",
        type=int,
        default=100,
        help="WatchImages streams beside the location writes (0: no watch figures)",
    )
    parser.add_argument(
        "--watch-rate",
        type=float,
        default=100.0,
        help="location writes per second of the paced round, whose latency is printed apart",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="loads per workload and auth mode, alternating the modes (figures are means)",
    )
    args = parser.parse_args()
    if args.fast:
        args.seconds, args.images, args.calls = 1.0, 20, 20
    return scale(args) if args.scale else throughput(args)


if __name__ == "__main__":
    sys.exit(main())
