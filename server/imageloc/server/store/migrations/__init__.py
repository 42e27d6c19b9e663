"""Alembic migrations of the store's schema; `imageloc db upgrade` runs them."""
