"""Alembic migrations; :meth:`tunnelbroker.store.Store.migrate` runs them."""
