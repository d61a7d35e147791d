"""Persistent state: users, tunnels and address allocations (SQLAlchemy Core + Alembic).

Only plain records (:mod:`tunnelbroker.store.records`) cross this package's boundary; the ORM
models exist to define the schema.
"""

from tunnelbroker.store.database import Applied, Changes, Store
from tunnelbroker.store.errors import MigrationError, StoreError, UserExists
from tunnelbroker.store.records import (
    AllocationRecord,
    AuditRecord,
    TokenRecord,
    TunnelRecord,
    UserRecord,
)

__all__ = [
    "AllocationRecord",
    "Applied",
    "AuditRecord",
    "Changes",
    "MigrationError",
    "Store",
    "StoreError",
    "TokenRecord",
    "TunnelRecord",
    "UserExists",
    "UserRecord",
]
