"""Managed tunnels (static 6in4, heartbeat, AYIYA) and TIC logins.

Tunnels get a name, a PoP, their own secret and update key, a routed /64, user and admin
states and the last error; users get MD5(password) for TIC's challenge.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TUNNEL_COLUMNS = (
    ("name", sa.String(length=64), None),
    ("pop", sa.String(length=32), None),
    ("secret", sa.String(length=64), None),
    ("update_key", sa.String(length=64), None),
    ("routed_prefix", sa.String(), None),
    ("user_state", sa.String(length=16), "enabled"),
    ("admin_state", sa.String(length=16), "enabled"),
    ("last_error", sa.String(), None),
)


def upgrade() -> None:
    # Plain ADD COLUMN, also on SQLite: rebuilding the table there would drop its
    # sqlite_sequence row, and ids of deleted rows could then come back.
    op.add_column("users", sa.Column("tic_md5", sa.String(length=32), nullable=True))
    for name, type_, default in _TUNNEL_COLUMNS:
        op.add_column(
            "tunnels", sa.Column(name, type_, nullable=default is None, server_default=default)
        )


def downgrade() -> None:
    # SQLite cannot drop columns in place; batch mode rebuilds the table (downgrades only).
    with op.batch_alter_table("tunnels") as batch:
        for name, _type, _default in reversed(_TUNNEL_COLUMNS):
            batch.drop_column(name)
    with op.batch_alter_table("users") as batch:
        batch.drop_column("tic_md5")
