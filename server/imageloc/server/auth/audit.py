"""The audit log: one JSON line per mutation and per refused credential or policy.

Standard library, the domain and observability.logs (whose JSON line it shares: time,
level, logger, message) only. Never holds a token or a location URL.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import IO, Any

from imageloc.server.domain.access import Principal
from imageloc.server.observability import logs

#: The `logger` of an audit line, as the JSON log names the logger of each of its lines.
LOGGER = "imageloc.audit"


class AuditLog:
    """JSON lines to a stream (standard error by default) or a file opened for appending."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str) -> AuditLog:
        """The audit log at path (appended to), or on standard error when path is empty."""
        if not path:
            return cls(sys.stderr)
        return cls(open(path, "a", encoding="utf-8", buffering=1))

    def record(
        self,
        *,
        rpc: str,
        principal: Principal | None,
        image_id: str,
        code: str,
        reason: str,
        request_id: str,
    ) -> None:
        """Write one line: who did what to which image, and how it ended."""
        entry: dict[str, Any] = {
            "time": logs.timestamp(time.time()),
            "level": "INFO",
            "logger": LOGGER,
            "message": " ".join(word for word in ("audit", rpc, code, reason) if word),
            "audit": "imageloc",
            "rpc": rpc,
            "sub": principal.user_id if principal else "",
            "project": principal.project_id if principal else "",
            "serviceIdentity": principal.service_identity if principal else "",
            "authenticated": principal is not None,
            "imageId": image_id,
            "code": code,
            "reason": reason,
            "requestId": request_id,
        }
        if trace_id := logs.trace_id():
            entry["traceId"] = trace_id
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self._lock:
            self._stream.write(line)
            self._stream.flush()
