"""No secret reaches the server's log: URL credentials and bearer tokens are masked."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from imageloc.server.auth.redact import install, redact


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("https://user:hunter2@store.example/a.img", "https://***@store.example/a.img"),
        (
            "rbd://token@ceph/pool/img/snap and s3://k:s@b/o",
            "rbd://***@ceph/pool/img/snap and s3://***@b/o",
        ),
        ("authorization: Bearer eyJhbGciOi.eyJzdWIi.c2ln", "authorization: Bearer ***"),
        ("https://store.example/a.img", "https://store.example/a.img"),
        ("mail me at ops@example.org", "mail me at ops@example.org"),
    ],
)
def test_redact_masks_credentials_and_tokens_only(text: str, masked: str) -> None:
    assert redact(text) == masked


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    logger = logging.getLogger("imageloc.test.redact")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    install(logger)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def test_a_log_record_and_its_traceback_carry_no_secret(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logged
    logger.warning("adding %s failed", "https://user:hunter2@store.example/a.img")
    try:
        raise ValueError("bad location https://admin:s3cret@store.example/b")
    except ValueError:
        logger.exception("unexpected error with Bearer abc.def.ghi")
    text = stream.getvalue()
    assert "hunter2" not in text
    assert "s3cret" not in text
    assert "abc.def.ghi" not in text
    assert "https://***@store.example/a.img" in text
    assert "ValueError" in text  # the traceback is kept, masked


def test_install_is_idempotent() -> None:
    logger = logging.getLogger("imageloc.test.redact.twice")
    handler = logging.NullHandler()
    logger.addHandler(handler)
    try:
        install(logger)
        install(logger)
        assert len(handler.filters) == 1
    finally:
        logger.removeHandler(handler)
