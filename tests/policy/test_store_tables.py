"""The store schema: prefixed table names and the constraints the store relies on."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import IntegrityError

from pyipsec.policy.store_tables import metadata, policies, policy_versions


def test_tables_are_prefixed():
    assert metadata.tables and all(name.startswith("pyipsec_") for name in metadata.tables)


def test_version_numbers_are_unique_per_policy():
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    row = dict(text="t", sha256="0" * 64, author="a", comment="", created_at=1.0)
    with engine.begin() as conn:
        conn.execute(policies.insert().values(id=1, name="p", created_at=1.0))
        conn.execute(policies.insert().values(id=2, name="q", created_at=1.0))
        conn.execute(policy_versions.insert().values(policy_id=1, version=1, **row))
        conn.execute(policy_versions.insert().values(policy_id=2, version=1, **row))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(policy_versions.insert().values(policy_id=1, version=1, **row))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(policies.insert().values(name="p", created_at=2.0))
