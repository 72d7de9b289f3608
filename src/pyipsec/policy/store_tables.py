"""The tables of the policy store (SQLAlchemy Core; the same schema on SQLite and PostgreSQL).

Names are prefixed ``pyipsec_`` so that the store can share a PostgreSQL database with other
applications. See :mod:`pyipsec.policy.store` for what the rows mean.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "MAX_NAME",
    "applied_log",
    "assignments",
    "group_members",
    "groups",
    "hosts",
    "metadata",
    "policies",
    "policy_versions",
]

MAX_NAME = 200

metadata = MetaData()

policies = Table(
    "pyipsec_policies",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(MAX_NAME), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)
policy_versions = Table(
    "pyipsec_policy_versions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("policy_id", Integer, ForeignKey("pyipsec_policies.id"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("text", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("author", String(MAX_NAME), nullable=False),
    Column("comment", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("policy_id", "version"),
)
groups = Table(
    "pyipsec_groups",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(MAX_NAME), nullable=False, unique=True),
    Column("description", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)
hosts = Table(
    "pyipsec_hosts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(MAX_NAME), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)
group_members = Table(
    "pyipsec_group_members",
    metadata,
    Column("group_id", Integer, ForeignKey("pyipsec_groups.id"), primary_key=True),
    Column("host_id", Integer, ForeignKey("pyipsec_hosts.id"), primary_key=True),
)
assignments = Table(
    "pyipsec_assignments",
    metadata,
    Column("group_id", Integer, ForeignKey("pyipsec_groups.id"), primary_key=True),
    Column("policy_id", Integer, ForeignKey("pyipsec_policies.id"), nullable=False),
    Column("assigned_at", Float, nullable=False),
)
applied_log = Table(
    "pyipsec_applied_log",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("host", String(MAX_NAME), nullable=False),
    Column("policy", String(MAX_NAME), nullable=False),
    Column("version", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("status", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    Column("at", Float, nullable=False),
)
