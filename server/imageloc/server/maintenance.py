"""Background upkeep of a running server: health from the store, and forgetting old requests.

Imports grpc health's messages and the domain's ports; app.py starts and stops it, and
says how to set health (on the server's event loop).
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable
from typing import Protocol

from grpc_health.v1 import health_pb2

from imageloc.server.domain.ports import DeadlineExceededError, StoreUnavailableError
from imageloc.server.service import utc_now

log = logging.getLogger(__name__)


class MaintainedStore(Protocol):
    """What maintenance needs of the store (SqlStore has it)."""

    def check(self) -> None: ...

    def prune_requests(self, *, before: datetime.datetime) -> int: ...

    def prune_changes(self, *, before: datetime.datetime) -> int: ...


#: A store that has not answered a check within this long counts as unavailable.
CHECK_TIMEOUT_SECONDS = 3.0

#: How long stop() waits for the thread to notice.
STOP_WAIT_SECONDS = 0.5

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

#: A grpc.health.v1 serving status (SERVING, NOT_SERVING).
ServingStatus = int


class Maintenance:
    """A daemon thread that checks the store every `check_seconds` and reports health.

    Health is SERVING while the store answers and NOT_SERVING while it does not; it comes
    back by itself when the store does. Every `prune_seconds` it forgets idempotent
    requests' outcomes older than `retention`, and changes older than `change_retention`.
    """

    def __init__(
        self,
        *,
        store: MaintainedStore,
        set_health: Callable[[str, ServingStatus], object],
        services: tuple[str, ...],
        check_seconds: float,
        prune_seconds: float,
        retention: datetime.timedelta,
        change_retention: datetime.timedelta | None = None,
    ) -> None:
        self._store = store
        self._set_health = set_health
        self._services = services
        self._check_seconds = check_seconds
        self._prune_seconds = prune_seconds
        self._retention = retention
        self._change_retention = change_retention
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="imageloc-maintenance", daemon=True)
        self._serving: bool | None = None
        self._probe_thread: threading.Thread | None = None

    def start(self) -> None:
        """Report health now, then keep checking in the background."""
        self.check_once()
        self._thread.start()

    def stop(self) -> None:
        """Stop checking. Waits briefly: the daemon thread may be stuck on the store (a
        prune behind a lock, a check on a database that stopped answering), and stopping
        the server must not wait for that."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=STOP_WAIT_SECONDS)

    def check_once(self) -> bool:
        """Ask the store, set health accordingly; whether it answered in time."""
        problem = self._probe()
        serving = problem is None
        if not serving and self._serving is not False:
            log.warning("store unavailable, health NOT_SERVING: %s", problem)
        if serving and self._serving is False:
            log.info("store reachable again, health SERVING")
        self._serving = serving
        for name in self._services:
            self._set_health(name, SERVING if serving else NOT_SERVING)
        return serving

    def _probe(self) -> str | None:
        """Why the store is not answering, or None when it answered within the timeout.

        The check runs in a thread of its own: a database that stops answering (the
        connection open, nothing coming back) would block it with no end. While one probe
        hangs, no other is started, and the store counts as unavailable.
        """
        if self._probe_thread is not None and self._probe_thread.is_alive():
            return "the previous check has not returned"
        outcome: list[str | None] = []

        def probe() -> None:
            try:
                self._store.check()
                outcome.append(None)
            except StoreUnavailableError as error:
                outcome.append(str(error))

        self._probe_thread = threading.Thread(target=probe, name="imageloc-probe", daemon=True)
        self._probe_thread.start()
        self._probe_thread.join(timeout=CHECK_TIMEOUT_SECONDS)
        if not outcome:
            return f"no answer within {CHECK_TIMEOUT_SECONDS} s"
        return outcome[0]

    def prune_once(self) -> int:
        """Forget request outcomes older than the retention, and changes older than theirs
        (the compact revision moves on); how many request outcomes were forgotten."""
        now = utc_now()
        forgotten = self._store.prune_requests(before=now - self._retention)
        if self._change_retention is not None:
            self._store.prune_changes(before=now - self._change_retention)
        return forgotten

    def _run(self) -> None:
        next_prune = 0.0
        elapsed = 0.0
        while not self._stopping.wait(self._check_seconds):
            elapsed += self._check_seconds
            if self.check_once() and elapsed >= next_prune:
                next_prune = elapsed + self._prune_seconds
                try:
                    self.prune_once()
                except (StoreUnavailableError, DeadlineExceededError) as error:
                    log.warning("could not prune the request log: %s", error)
