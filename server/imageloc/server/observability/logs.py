"""The server log: text or JSON lines, and the facts of the call each line is written in.

Standard library only. The gRPC adapter binds a call's facts (RPC, image id, request id,
principal) with `call_facts`; every line written meanwhile carries them.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator

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


def configure(log_format: str) -> None:
    """Send the server's log to standard error as log_format asks (text or json)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
