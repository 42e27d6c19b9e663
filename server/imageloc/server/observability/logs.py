"""The server log: text or JSON lines, and the facts of the call each line is written in.

Standard library only. The gRPC adapter binds a call's facts (RPC, image id, request id,
principal) with `call_facts`; every line written meanwhile carries them.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import os
import re
import sys
import threading
import types
from collections.abc import Iterator
from typing import IO, Any

#: Today's text line; the json format writes the same facts and more as one object.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
#: The log record attributes (`extra=`) a JSON line carries, after the call's facts.
EXTRA_KEYS = (
    "rpc",
    "imageId",
    "requestId",
    "code",
    "reason",
    "sub",
    "project",
    "serviceIdentity",
    "traceId",
)
#: The logger of the lines native code (gRPC's C core) writes to standard error itself.
NATIVE_LOGGER = "grpc.native"
#: gRPC's (absl's) line: severity letter, MMDD, time, thread, then "file.cc:line] text".
_NATIVE_LINE = re.compile(r"(?P<severity>[IWEF])\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ (?P<text>.*)")
_NATIVE_LEVELS = {
    "I": logging.INFO,
    "W": logging.WARNING,
    "E": logging.ERROR,
    "F": logging.CRITICAL,
}
#: Set once descriptor 2 is a pipe read by _log_native_lines.
_NATIVE_ROUTED = threading.Event()
#: Where the trace id comes from, once the server has imported it (never imported here).
_TRACING_MODULE = "imageloc.server.observability.tracing"

#: The facts of the call being served on this task or greenlet (lowerCamel keys).
_CALL: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "imageloc_call", default=None
)


@contextlib.contextmanager
def call_facts(**facts: str) -> Iterator[None]:
    """Lines written in the block carry facts (and those `note` adds)."""
    token = _CALL.set(dict(facts))
    try:
        yield
    finally:
        _CALL.reset(token)


def note(**facts: str) -> None:
    """Add facts to the current call's (nothing outside a call); empty values are left out."""
    current = _CALL.get()
    if current is not None:
        current.update((key, value) for key, value in facts.items() if value)


def current_facts() -> dict[str, str]:
    """The current call's facts (empty outside a call)."""
    return dict(_CALL.get() or {})


def refused(logger: logging.Logger, rpc: str, code: str, reason: str, image_id: str = "") -> None:
    """The INFO line of a refused call: its RPC, status code, ErrorInfo reason and image id."""
    logger.info(
        "refused %s: %s %s",
        rpc,
        code,
        reason,
        extra={"rpc": rpc, "imageId": image_id, "code": code, "reason": reason},
    )


def timestamp(seconds: float) -> str:
    """seconds since the epoch in ISO 8601, UTC, to the millisecond: 2026-12-03T07:10:00.123+00:00.

    The time of every JSON log line and of every audit line.
    """
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds")


def trace_id() -> str:
    """The current span's trace id (32 hex digits), or "" without one or without tracing."""
    tracing = sys.modules.get(_TRACING_MODULE)
    current = getattr(tracing, "current_trace_id", None)
    if current is None:
        return ""
    try:
        found = current()
    except Exception:  # a log line is written even when tracing is broken
        return ""
    return found if isinstance(found, str) else ""


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line, ASCII only; never raises.

    Reads the message and exception text as the handler's filters left them, so that a
    RedactingFilter on the handler has masked them first.
    """

    def format(self, record: logging.LogRecord) -> str:
        try:
            return _dumps(self._entry(record))
        except Exception as error:  # a broken record still gives a line, and a JSON one
            return _dumps(
                {
                    "time": timestamp(record.created),
                    "level": record.levelname,
                    "logger": record.name,
                    "message": f"unformattable log record of {record.pathname}:{record.lineno}",
                    "exception": repr(error),
                }
            )

    def _entry(self, record: logging.LogRecord) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "time": timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(current_facts())
        entry.update(_extra(record))
        if "traceId" not in entry and (found := trace_id()):
            entry["traceId"] = found
        if exception := _exception_text(self, record):
            entry["exception"] = exception
        return entry


def handler(log_format: str, stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing to stream (standard error) in log_format: text or json."""
    made = logging.StreamHandler(stream or sys.stderr)
    made.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    return made


def configure(log_format: str) -> None:
    """Send the server's log to standard error as log_format asks (text or json).

    With json, Python's warnings, uncaught exceptions (of the main thread, of other
    threads, and those Python can only ignore) and the lines native code writes to
    standard error itself (gRPC's C core) are log records too, so that every line the
    process writes is a JSON object.
    """
    if log_format == "json":
        _route_native_stderr()  # first: the handler writes to the sys.stderr it leaves
    logging.basicConfig(level=logging.INFO, handlers=[handler(log_format)], force=True)
    if log_format != "json":
        return
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread_exception
    sys.unraisablehook = _log_unraisable


def _route_native_stderr() -> None:
    """Python's sys.stderr keeps standard error; what else writes to descriptor 2 is logged.

    gRPC's C core prints its own lines there (a failed TLS handshake, at INFO, whatever
    GRPC_VERBOSITY says once grpc is imported, as `imageloc serve` has by now). Descriptor
    2 becomes a pipe whose lines a thread logs, each a record of NATIVE_LOGGER.
    """
    if _NATIVE_ROUTED.is_set():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    kept = os.dup(2)
    reading, writing = os.pipe()
    os.dup2(writing, 2)
    os.close(writing)
    sys.stderr = open(  # noqa: SIM115 - standard error, open until the process ends
        kept, "w", encoding="utf-8", errors="backslashreplace", buffering=1
    )
    threading.Thread(
        target=_log_native_lines, args=(reading,), name="imageloc-native-stderr", daemon=True
    ).start()
    _NATIVE_ROUTED.set()


def _log_native_lines(descriptor: int) -> None:
    """Log each line read from descriptor, at the level of its gRPC severity letter."""
    logger = logging.getLogger(NATIVE_LOGGER)
    with open(descriptor, "rb") as pipe:
        for raw in pipe:
            level, message = native_record(raw.decode("utf-8", errors="replace"))
            if message:
                logger.log(level, "%s", message)


def native_record(line: str) -> tuple[int, str]:
    """The level and message of a line of gRPC's C core (WARNING for a line of another)."""
    line = line.rstrip("\r\n")
    found = _NATIVE_LINE.match(line)
    if found is None:
        return logging.WARNING, line
    return _NATIVE_LEVELS[found["severity"]], found["text"]


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    """The record's `extra` fields among EXTRA_KEYS that have a value."""
    found: dict[str, Any] = {}
    for key in EXTRA_KEYS:
        value = record.__dict__.get(key)
        if value is None or value == "":
            continue
        found[key] = value if isinstance(value, str | int | float | bool) else str(value)
    return found


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """The record's traceback (as a RedactingFilter left it) and stack, or ""."""
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    parts = [record.exc_text or ""]
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return "\n".join(part for part in parts if part)


def _dumps(entry: dict[str, Any]) -> str:
    return json.dumps(entry, ensure_ascii=True, separators=(",", ":"), default=str)


def _log_uncaught(
    kind: type[BaseException], error: BaseException, trace: types.TracebackType | None
) -> None:
    logging.getLogger("imageloc.server").critical(
        "uncaught exception", exc_info=(kind, error, trace)
    )


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    logging.getLogger("imageloc.server").error(
        "uncaught exception in thread %s",
        args.thread.name if args.thread is not None else "?",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
    )


def _log_unraisable(unraisable: Any) -> None:
    logging.getLogger("imageloc.server").error(
        "%s: %r",
        unraisable.err_msg or "Exception ignored in",
        unraisable.object,
        exc_info=(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback),
    )
