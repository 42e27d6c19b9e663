"""The store: SQLModel tables, engines, the image repository and units of work.

It implements the domain's ports (imageloc.server.domain.ports) with SQLAlchemy.
"""

from imageloc.server.store.engine import is_embedded
from imageloc.server.store.repository import SqlImageRepository
from imageloc.server.store.schema import SchemaMismatchError
from imageloc.server.store.unit_of_work import SqlStore, SqlUnitOfWork

__all__ = [
    "SchemaMismatchError",
    "SqlImageRepository",
    "SqlStore",
    "SqlUnitOfWork",
    "is_embedded",
]
