"""The schema, as SQLAlchemy declarative models.

The migrations in ``migrations/versions`` must produce exactly this schema; a test compares
them. The rest of the store works on ``Base.metadata``'s tables with SQLAlchemy Core.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Deterministic constraint names, so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Every table. Ids are never reused, on SQLite too (``sqlite_autoincrement``): the broker
    may still hold the id of a row deleted meanwhile (a user, a tunnel, an allocation)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    __tablename__ = "users"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String)
    digest_ha1: Mapped[str] = mapped_column(String(32))
    realm: Mapped[str] = mapped_column(String)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Double)
    tic_md5: Mapped[str | None] = mapped_column(String(32), nullable=True)


class Tunnel(Base):
    __tablename__ = "tunnels"
    __table_args__ = (
        Index("ix_tunnels_state", "state"),
        Index("ix_tunnels_user_id", "user_id"),
        Index("ix_tunnels_client_ipv4", "client_ipv4"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=True
    )
    kind: Mapped[str] = mapped_column(String)
    type: Mapped[str] = mapped_column(String)
    state: Mapped[str] = mapped_column(String)
    transport: Mapped[str] = mapped_column(String)
    client_ipv4: Mapped[str | None] = mapped_column(String, nullable=True)
    client_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    client_ipv6: Mapped[str | None] = mapped_column(String, nullable=True)
    server_ipv4: Mapped[str | None] = mapped_column(String, nullable=True)
    server_ipv6: Mapped[str | None] = mapped_column(String, nullable=True)
    link_prefix: Mapped[str] = mapped_column(String)
    delegated_prefix: Mapped[str | None] = mapped_column(String, nullable=True)
    dns_servers: Mapped[list[str]] = mapped_column(JSON)
    keepalive_interval: Mapped[int] = mapped_column(Integer)
    mtu: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)
    expires_at: Mapped[float] = mapped_column(Double)
    last_seen: Mapped[float | None] = mapped_column(Double, nullable=True)
    end_reason: Mapped[str | None] = mapped_column(String, nullable=True)
    packets_in: Mapped[int] = mapped_column(BigInteger, default=0)
    packets_out: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)
    claimed_ipv4: Mapped[str | None] = mapped_column(String, nullable=True)
    name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    pop: Mapped[str | None] = mapped_column(String(32), nullable=True)
    secret: Mapped[str | None] = mapped_column(String(64), nullable=True)
    update_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    routed_prefix: Mapped[str | None] = mapped_column(String, nullable=True)
    user_state: Mapped[str] = mapped_column(String(16), default="enabled", server_default="enabled")
    admin_state: Mapped[str] = mapped_column(
        String(16), default="enabled", server_default="enabled"
    )
    last_error: Mapped[str | None] = mapped_column(String, nullable=True)


class Allocation(Base):
    __tablename__ = "allocations"
    __table_args__ = (
        Index("ix_allocations_user_id", "user_id"),
        Index("ix_allocations_tunnel_id", "tunnel_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=True
    )
    tunnel_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("tunnels.id", ondelete="SET NULL"), nullable=True
    )
    kind: Mapped[str] = mapped_column(String)
    prefix: Mapped[str] = mapped_column(String, unique=True)
    created_at: Mapped[float] = mapped_column(Double)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    __table_args__ = (Index("ix_api_tokens_user_id", "user_id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer, ForeignKey("users.id", ondelete="CASCADE"))
    #: SHA-256 of the token, hex: the token itself is shown once and never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Double)
    last_used: Mapped[float | None] = mapped_column(Double, nullable=True)


class AuditEntry(Base):
    """Who did what, for the operators: sign-ups, logins, tunnel and account changes."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Double)
    #: The account acting (None: anonymous, e.g. a failed login), by name: it outlives the row.
    actor: Mapped[str | None] = mapped_column(String(64), nullable=True)
    source: Mapped[str | None] = mapped_column(String(64), nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(128), nullable=True)
    detail: Mapped[str | None] = mapped_column(String, nullable=True)


class Invite(Base):
    """A sign-up invitation (``[web] signup = "invite"``); only its SHA-256 is stored."""

    __tablename__ = "invites"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Double)
    used_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    used_at: Mapped[float | None] = mapped_column(Double, nullable=True)


#: The tables, for Core statements.
users: Table = Base.metadata.tables["users"]
tunnels: Table = Base.metadata.tables["tunnels"]
allocations: Table = Base.metadata.tables["allocations"]
api_tokens: Table = Base.metadata.tables["api_tokens"]
audit_log: Table = Base.metadata.tables["audit_log"]
invites: Table = Base.metadata.tables["invites"]
