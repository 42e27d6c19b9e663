"""No secret in the server's logs: URL credentials and bearer tokens are masked in every record.

Standard library only; the server installs RedactingFilter on its log handlers.
"""

from __future__ import annotations

import logging
import re

#: `scheme://user:password@` (or `scheme://token@`): what is between `//` and `@`.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\"]+@")
#: A bearer token, wherever a message quotes one.
_BEARER = re.compile(r"(?P<scheme>[Bb]earer\s+)[A-Za-z0-9._~+/=-]+")
MASK = "***"


def redact(text: str) -> str:
    """text with URL credentials and bearer tokens replaced by ***."""
    if "@" in text:
        text = _URL_CREDENTIALS.sub(rf"\g<scheme>{MASK}@", text)
    if "earer" in text:
        text = _BEARER.sub(rf"\g<scheme>{MASK}", text)
    return text


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message and in its exception text, before any handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Put RedactingFilter on every handler of logger (the root logger by default)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


__all__ = ["MASK", "RedactingFilter", "install", "redact"]
