"""Exceptions raised by the store. Database driver errors never escape it unwrapped."""


class StoreError(Exception):
    """The database could not do what was asked; the message says why."""


class UserExists(StoreError):
    """A user with this name already exists."""


class MigrationError(StoreError):
    """The schema could not be brought up to date (or is newer than this code)."""
