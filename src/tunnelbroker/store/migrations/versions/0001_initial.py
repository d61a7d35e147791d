"""Initial schema: users, tunnels, allocations.

Revision ID: 0001
Revises:
Create Date: 2025-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(), nullable=False),
        sa.Column("digest_ha1", sa.String(length=32), nullable=False),
        sa.Column("realm", sa.String(), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("name", name="uq_users_name"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "tunnels",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("transport", sa.String(), nullable=False),
        sa.Column("client_ipv4", sa.String(), nullable=True),
        sa.Column("client_port", sa.Integer(), nullable=True),
        sa.Column("client_ipv6", sa.String(), nullable=True),
        sa.Column("server_ipv4", sa.String(), nullable=True),
        sa.Column("server_ipv6", sa.String(), nullable=True),
        sa.Column("link_prefix", sa.String(), nullable=False),
        sa.Column("delegated_prefix", sa.String(), nullable=True),
        sa.Column("dns_servers", sa.JSON(), nullable=False),
        sa.Column("keepalive_interval", sa.Integer(), nullable=False),
        sa.Column("mtu", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("last_seen", sa.Double(), nullable=True),
        sa.Column("end_reason", sa.String(), nullable=True),
        sa.Column("packets_in", sa.BigInteger(), nullable=False),
        sa.Column("packets_out", sa.BigInteger(), nullable=False),
        sa.Column("bytes_in", sa.BigInteger(), nullable=False),
        sa.Column("bytes_out", sa.BigInteger(), nullable=False),
        sa.Column("claimed_ipv4", sa.String(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_tunnels_user_id_users", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_tunnels"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_tunnels_state", "tunnels", ["state"])
    op.create_index("ix_tunnels_user_id", "tunnels", ["user_id"])
    op.create_index("ix_tunnels_client_ipv4", "tunnels", ["client_ipv4"])
    op.create_table(
        "allocations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("tunnel_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("prefix", sa.String(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_allocations_user_id_users", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tunnel_id"],
            ["tunnels.id"],
            name="fk_allocations_tunnel_id_tunnels",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_allocations"),
        sa.UniqueConstraint("prefix", name="uq_allocations_prefix"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_allocations_user_id", "allocations", ["user_id"])
    op.create_index("ix_allocations_tunnel_id", "allocations", ["tunnel_id"])


def downgrade() -> None:
    op.drop_table("allocations")
    op.drop_table("tunnels")
    op.drop_table("users")
