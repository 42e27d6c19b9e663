"""PostgreSQL's LISTEN for the change log: a wake-up for the change feed when any replica commits.

Runs on the server's event loop; imports psycopg (async) and sqlalchemy's URL parsing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg
from sqlalchemy.engine import make_url

from imageloc.server.store.change_log import CHANNEL

log = logging.getLogger(__name__)

#: The pause before listening again after the connection failed.
RETRY_SECONDS = 1.0


async def wake_on_notify(database_url: str, wake: Callable[[], None]) -> None:
    """Call wake for every NOTIFY on the change log's channel, until cancelled.

    A lost connection is opened again after RETRY_SECONDS; meanwhile the feed's own poll
    still finds every change, only later.
    """
    url = make_url(database_url).set(drivername="postgresql")
    conninfo = url.render_as_string(hide_password=False)
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(
                conninfo, autocommit=True
            ) as connection:
                await connection.execute(f"LISTEN {CHANNEL}")
                wake()  # changes committed while not listening
                async for _ in connection.notifies():
                    wake()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # psycopg.Error, OSError: listen again shortly
            log.warning("change feed: LISTEN %s failed, retrying: %s", CHANNEL, error)
        await asyncio.sleep(RETRY_SECONDS)


__all__ = ["RETRY_SECONDS", "wake_on_notify"]
