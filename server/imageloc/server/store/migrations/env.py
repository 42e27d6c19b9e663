"""Alembic's environment: migrate on the connection that imageloc.server.store.schema hands in.

Runs only inside imageloc (no alembic.ini, no URL here): schema.py opens the connection,
takes the lock and passes it as config.attributes["connection"].
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

connection: Connection = context.config.attributes["connection"]
context.configure(connection=connection, render_as_batch=True, transaction_per_migration=False)
with context.begin_transaction():
    context.run_migrations()
