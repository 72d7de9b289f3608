"""The central policy store: versioned policies, host groups, assignments, an applied-log.

One code path through SQLAlchemy Core serves both back ends:

* SQLite (the default, embedded): ``PolicyStore("/var/lib/pyipsec/policy.db")``; the file is
  created with mode 0600 before SQLite opens it (its journal inherits the mode).
* PostgreSQL, when several policy servers share one store:
  ``PolicyStore("postgresql+psycopg://user@/db?host=/run/postgresql")``.

Model (the group-policy vocabulary without a directory service):

* a *policy* has a unique name and a history of *versions*; every edit makes a new version
  recording the text, its sha256, author, comment and time; an edit whose text is unchanged
  makes no version;
* a *host* is known by its machine-certificate identity (the certificate's common name);
  hosts are members of *groups*; a policy is *assigned* (linked) to groups; a group holds
  at most one policy, and a host in several groups must resolve to one policy;
* the *applied-log* records what each host reports it applied: (host, policy, version, sha256,
  status, detail, time).

Every policy text is validated (:func:`pyipsec.policy.envelope.validate_policy_text`) before it
is stored; a refused text changes nothing. Times arrive as ``now`` (seconds since the epoch).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Table, create_engine, func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from pyipsec.errors import ConfigError, PyipsecError
from pyipsec.policy.envelope import validate_policy_text
from pyipsec.policy.store_tables import (
    MAX_NAME,
    applied_log,
    assignments,
    group_members,
    groups,
    hosts,
    metadata,
    policies,
    policy_versions,
)

__all__ = [
    "AppliedRecord",
    "GroupInfo",
    "PolicyStore",
    "PolicySummary",
    "PolicyVersion",
    "StoreError",
    "StoreStats",
    "sha256_text",
]

_MAX_NAME = MAX_NAME


class StoreError(PyipsecError):
    """The store itself failed (cannot open, concurrent edit lost a race, ...)."""


def sha256_text(text: str) -> str:
    """Hex sha256 of a policy text (UTF-8), as recorded with each version."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > _MAX_NAME:
        raise ConfigError(f"{kind} name must be 1-{_MAX_NAME} characters", key=kind)
    if any(ord(c) < 32 for c in name):
        raise ConfigError(f"{kind} name contains control characters", key=kind)
    return name


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class PolicyVersion:
    """One stored version of a policy (text plus who/when/why and its sha256)."""

    name: str
    version: int
    text: str
    sha256: str
    author: str
    comment: str
    created_at: float


@dataclass(frozen=True)
class PolicySummary:
    """A policy in listings: latest version, its time, and the groups it is assigned to."""

    name: str
    latest_version: int
    sha256: str
    updated_at: float
    groups: tuple[str, ...]


@dataclass(frozen=True)
class GroupInfo:
    """A host group, its members and its assigned policy (or None)."""

    name: str
    description: str
    hosts: tuple[str, ...]
    policy: str | None


@dataclass(frozen=True)
class AppliedRecord:
    """What a host reported: policy/version/sha256 it applied, status, detail, time."""

    host: str
    policy: str
    version: int
    sha256: str
    status: str
    detail: str
    at: float


@dataclass(frozen=True)
class StoreStats:
    """Snapshot of row counts and of refused operations."""

    policies: int
    versions: int
    groups: int
    hosts: int
    applied_records: int
    refused: int


APPLIED_STATUSES = ("applied", "stored", "failed", "refused")


# --------------------------------------------------------------------------- the store


class PolicyStore:
    """A policy store on SQLite (path) or any SQLAlchemy URL (``postgresql+psycopg://``)."""

    def __init__(
        self,
        target: str | os.PathLike[str],
        *,
        validator: Callable[[str, str], object] = validate_policy_text,
    ) -> None:
        target = str(target)
        if "://" in target:
            url = target
            self.location = target.split("@")[-1]  # never keep a password for display
        else:
            path = Path(target)
            if path.parent and not path.parent.exists():
                path.parent.mkdir(parents=True, mode=0o700)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.fchmod(fd, 0o600)
            os.close(fd)
            url = f"sqlite:///{path.resolve()}"
            self.location = str(path)
        self._validate = validator
        self._refused = 0
        try:
            self._engine = create_engine(url, future=True)
            metadata.create_all(self._engine)
        except (OperationalError, ModuleNotFoundError) as exc:
            raise StoreError(f"cannot open policy store {self.location}: {exc}") from None

    def __repr__(self) -> str:
        return f"PolicyStore({self.location!r})"

    def close(self) -> None:
        self._engine.dispose()

    # ------------------------------------------------------------------ helpers

    def _refuse(self, exc: ConfigError) -> ConfigError:
        self._refused += 1
        return exc

    def _policy_id(self, conn: Connection, name: str) -> int:
        pid = conn.execute(select(policies.c.id).where(policies.c.name == name)).scalar()
        if pid is None:
            raise self._refuse(ConfigError(f"no policy named {name!r}", key="policy"))
        return pid

    def _group_id(self, conn: Connection, name: str) -> int:
        gid = conn.execute(select(groups.c.id).where(groups.c.name == name)).scalar()
        if gid is None:
            raise self._refuse(ConfigError(f"no group named {name!r}", key="group"))
        return gid

    def _add_version(
        self,
        conn: Connection,
        pid: int,
        name: str,
        text: str,
        author: str,
        comment: str,
        now: float,
    ) -> PolicyVersion:
        latest = conn.execute(
            select(func.max(policy_versions.c.version)).where(policy_versions.c.policy_id == pid)
        ).scalar()
        row = PolicyVersion(
            name=name,
            version=(latest or 0) + 1,
            text=text,
            sha256=sha256_text(text),
            author=author,
            comment=comment,
            created_at=now,
        )
        conn.execute(
            policy_versions.insert().values(
                policy_id=pid,
                version=row.version,
                text=text,
                sha256=row.sha256,
                author=author,
                comment=comment,
                created_at=now,
            )
        )
        return row

    def _check_text(self, name: str, text: str) -> None:
        try:
            self._validate(text, name)
        except ConfigError as exc:
            raise self._refuse(exc) from None

    # ------------------------------------------------------------------ policies

    def create_policy(
        self, name: str, text: str, *, author: str, comment: str = "", now: float
    ) -> PolicyVersion:
        """Store a new policy as version 1 (the text is validated first)."""
        _check_name("policy", name)
        self._check_text(name, text)
        try:
            with self._engine.begin() as conn:
                if conn.execute(select(policies.c.id).where(policies.c.name == name)).scalar():
                    raise self._refuse(ConfigError(f"policy {name!r} exists", key="policy"))
                pid = conn.execute(
                    policies.insert().values(name=name, created_at=now)
                ).inserted_primary_key[0]
                return self._add_version(conn, pid, name, text, author, comment, now)
        except IntegrityError:
            raise StoreError(f"policy {name!r} was created concurrently") from None

    def edit_policy(
        self, name: str, text: str, *, author: str, comment: str = "", now: float
    ) -> tuple[PolicyVersion, bool]:
        """Store ``text`` as the next version; returns (latest version, whether it is new).

        An unchanged text (same sha256 as the latest version) makes no new version.
        """
        self._check_text(name, text)
        try:
            with self._engine.begin() as conn:
                pid = self._policy_id(conn, name)
                current = self._latest(conn, pid, name)
                if current.sha256 == sha256_text(text):
                    return current, False
                return self._add_version(conn, pid, name, text, author, comment, now), True
        except IntegrityError:
            raise StoreError(f"policy {name!r} was edited concurrently; try again") from None

    def import_policy(
        self, name: str, text: str, *, author: str, comment: str = "", now: float
    ) -> tuple[PolicyVersion, bool]:
        """Create the policy, or add a version when it exists (unchanged text: no version)."""
        with self._engine.connect() as conn:
            exists = conn.execute(select(policies.c.id).where(policies.c.name == name)).scalar()
        if exists is None:
            return self.create_policy(name, text, author=author, comment=comment, now=now), True
        return self.edit_policy(name, text, author=author, comment=comment, now=now)

    def _latest(
        self, conn: Connection, pid: int, name: str, version: int | None = None
    ) -> PolicyVersion:
        query = select(policy_versions).where(policy_versions.c.policy_id == pid)
        if version is None:
            query = query.order_by(policy_versions.c.version.desc()).limit(1)
        else:
            query = query.where(policy_versions.c.version == version)
        row = conn.execute(query).first()
        if row is None:
            raise self._refuse(
                ConfigError(f"policy {name!r} has no version {version}", key="version")
            )
        return PolicyVersion(
            name=name,
            version=row.version,
            text=row.text,
            sha256=row.sha256,
            author=row.author,
            comment=row.comment,
            created_at=row.created_at,
        )

    def get_policy(self, name: str, version: int | None = None) -> PolicyVersion:
        """The latest version of ``name`` (or the given version)."""
        with self._engine.connect() as conn:
            return self._latest(conn, self._policy_id(conn, name), name, version)

    def history(self, name: str) -> list[PolicyVersion]:
        """Every version of ``name``, oldest first."""
        with self._engine.connect() as conn:
            pid = self._policy_id(conn, name)
            rows = conn.execute(
                select(policy_versions)
                .where(policy_versions.c.policy_id == pid)
                .order_by(policy_versions.c.version)
            ).all()
        return [
            PolicyVersion(name, r.version, r.text, r.sha256, r.author, r.comment, r.created_at)
            for r in rows
        ]

    def list_policies(self) -> list[PolicySummary]:
        out = []
        with self._engine.connect() as conn:
            for pid, name in conn.execute(
                select(policies.c.id, policies.c.name).order_by(policies.c.name)
            ):
                latest = self._latest(conn, pid, name)
                linked = conn.execute(
                    select(groups.c.name)
                    .join(assignments, assignments.c.group_id == groups.c.id)
                    .where(assignments.c.policy_id == pid)
                    .order_by(groups.c.name)
                ).scalars()
                out.append(
                    PolicySummary(
                        name, latest.version, latest.sha256, latest.created_at, tuple(linked)
                    )
                )
        return out

    def delete_policy(self, name: str, *, force: bool = False) -> None:
        """Delete a policy and its history; refused while assigned unless ``force``."""
        with self._engine.begin() as conn:
            pid = self._policy_id(conn, name)
            linked = (
                conn.execute(
                    select(groups.c.name)
                    .join(assignments, assignments.c.group_id == groups.c.id)
                    .where(assignments.c.policy_id == pid)
                )
                .scalars()
                .all()
            )
            if linked and not force:
                raise self._refuse(
                    ConfigError(
                        f"policy {name!r} is assigned to {', '.join(sorted(linked))}; "
                        "unassign it first (or force)",
                        key="policy",
                    )
                )
            conn.execute(assignments.delete().where(assignments.c.policy_id == pid))
            conn.execute(policy_versions.delete().where(policy_versions.c.policy_id == pid))
            conn.execute(policies.delete().where(policies.c.id == pid))

    # ------------------------------------------------------------------ groups and hosts

    def create_group(self, name: str, *, description: str = "", now: float) -> None:
        _check_name("group", name)
        with self._engine.begin() as conn:
            if conn.execute(select(groups.c.id).where(groups.c.name == name)).scalar():
                raise self._refuse(ConfigError(f"group {name!r} exists", key="group"))
            conn.execute(groups.insert().values(name=name, description=description, created_at=now))

    def delete_group(self, name: str) -> None:
        with self._engine.begin() as conn:
            gid = self._group_id(conn, name)
            conn.execute(group_members.delete().where(group_members.c.group_id == gid))
            conn.execute(assignments.delete().where(assignments.c.group_id == gid))
            conn.execute(groups.delete().where(groups.c.id == gid))

    def add_host(self, group: str, host: str, *, now: float) -> bool:
        """Make ``host`` (its certificate identity) a member of ``group``; False if it was."""
        _check_name("host", host)
        with self._engine.begin() as conn:
            gid = self._group_id(conn, group)
            hid = conn.execute(select(hosts.c.id).where(hosts.c.name == host)).scalar()
            if hid is None:
                hid = conn.execute(
                    hosts.insert().values(name=host, created_at=now)
                ).inserted_primary_key[0]
            member = conn.execute(
                select(group_members.c.host_id).where(
                    group_members.c.group_id == gid, group_members.c.host_id == hid
                )
            ).first()
            if member is not None:
                return False
            conn.execute(group_members.insert().values(group_id=gid, host_id=hid))
            return True

    def remove_host(self, group: str, host: str) -> None:
        with self._engine.begin() as conn:
            gid = self._group_id(conn, group)
            hid = conn.execute(select(hosts.c.id).where(hosts.c.name == host)).scalar()
            deleted = 0
            if hid is not None:
                deleted = conn.execute(
                    group_members.delete().where(
                        group_members.c.group_id == gid, group_members.c.host_id == hid
                    )
                ).rowcount
            if not deleted:
                raise self._refuse(
                    ConfigError(f"host {host!r} is not a member of group {group!r}", key="host")
                )

    def list_groups(self) -> list[GroupInfo]:
        out = []
        with self._engine.connect() as conn:
            for g in conn.execute(select(groups).order_by(groups.c.name)):
                members = conn.execute(
                    select(hosts.c.name)
                    .join(group_members, group_members.c.host_id == hosts.c.id)
                    .where(group_members.c.group_id == g.id)
                    .order_by(hosts.c.name)
                ).scalars()
                policy = conn.execute(
                    select(policies.c.name)
                    .join(assignments, assignments.c.policy_id == policies.c.id)
                    .where(assignments.c.group_id == g.id)
                ).scalar()
                out.append(GroupInfo(g.name, g.description, tuple(members), policy))
        return out

    # ------------------------------------------------------------------ assignment

    def assign(self, policy: str, group: str, *, now: float) -> bool:
        """Link ``policy`` to ``group`` (False if linked already; refused if it has another)."""
        with self._engine.begin() as conn:
            pid = self._policy_id(conn, policy)
            gid = self._group_id(conn, group)
            current = conn.execute(
                select(assignments.c.policy_id).where(assignments.c.group_id == gid)
            ).scalar()
            if current == pid:
                return False
            if current is not None:
                other = conn.execute(
                    select(policies.c.name).where(policies.c.id == current)
                ).scalar()
                raise self._refuse(
                    ConfigError(
                        f"group {group!r} already has policy {other!r}; unassign it first",
                        key="group",
                    )
                )
            conn.execute(assignments.insert().values(group_id=gid, policy_id=pid, assigned_at=now))
            return True

    def unassign(self, policy: str, group: str) -> None:
        with self._engine.begin() as conn:
            pid = self._policy_id(conn, policy)
            gid = self._group_id(conn, group)
            deleted = conn.execute(
                assignments.delete().where(
                    assignments.c.group_id == gid, assignments.c.policy_id == pid
                )
            ).rowcount
            if not deleted:
                raise self._refuse(
                    ConfigError(f"policy {policy!r} is not assigned to {group!r}", key="group")
                )

    def policy_for_host(self, host: str) -> PolicyVersion | None:
        """The latest version of the policy assigned to ``host`` through its groups.

        None when the host is unknown or in no group with a policy; a ConfigError when its
        groups carry different policies (the administrator must resolve the conflict).
        """
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(policies.c.id, policies.c.name, groups.c.name.label("group"))
                .select_from(hosts)
                .join(group_members, group_members.c.host_id == hosts.c.id)
                .join(groups, groups.c.id == group_members.c.group_id)
                .join(assignments, assignments.c.group_id == groups.c.id)
                .join(policies, policies.c.id == assignments.c.policy_id)
                .where(hosts.c.name == host)
                .order_by(groups.c.name)
            ).all()
            distinct = {r.id: r.name for r in rows}
            if not distinct:
                return None
            if len(distinct) > 1:
                detail = ", ".join(f"{r.group} -> {r.name}" for r in rows)
                raise ConfigError(
                    f"host {host!r} has conflicting policies through its groups ({detail})",
                    key="host",
                )
            ((pid, name),) = distinct.items()
            return self._latest(conn, pid, name)

    # ------------------------------------------------------------------ applied-log

    def record_applied(
        self,
        host: str,
        policy: str,
        version: int,
        sha256: str,
        *,
        status: str,
        detail: str = "",
        now: float,
    ) -> AppliedRecord:
        """Append what ``host`` reports it did with a policy version."""
        _check_name("host", host)
        _check_name("policy", policy)
        if status not in APPLIED_STATUSES:
            raise self._refuse(
                ConfigError(f"status must be one of {', '.join(APPLIED_STATUSES)}", key="status")
            )
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise self._refuse(ConfigError("version must be a positive integer", key="version"))
        if not isinstance(sha256, str) or len(sha256) != 64:
            raise self._refuse(ConfigError("sha256 must be 64 hex digits", key="sha256"))
        record = AppliedRecord(host, policy, version, sha256, status, detail[:2000], now)
        with self._engine.begin() as conn:
            conn.execute(
                applied_log.insert().values(
                    host=host,
                    policy=policy,
                    version=version,
                    sha256=sha256,
                    status=status,
                    detail=record.detail,
                    at=now,
                )
            )
        return record

    def applied(self, host: str | None = None, *, limit: int = 1000) -> list[AppliedRecord]:
        """Applied-log entries, newest first (optionally of one host)."""
        query = select(applied_log).order_by(applied_log.c.at.desc(), applied_log.c.id.desc())
        if host is not None:
            query = query.where(applied_log.c.host == host)
        with self._engine.connect() as conn:
            rows = conn.execute(query.limit(limit)).all()
        return [
            AppliedRecord(r.host, r.policy, r.version, r.sha256, r.status, r.detail, r.at)
            for r in rows
        ]

    def host_status(self) -> list[tuple[str, AppliedRecord | None]]:
        """Every known host (members and reporters) with its latest applied-log entry."""
        with self._engine.connect() as conn:
            names = set(conn.execute(select(hosts.c.name)).scalars())
            names |= set(conn.execute(select(applied_log.c.host).distinct()).scalars())
        out: list[tuple[str, AppliedRecord | None]] = []
        for name in sorted(names):
            latest = self.applied(name, limit=1)
            out.append((name, latest[0] if latest else None))
        return out

    def statistics(self) -> StoreStats:
        with self._engine.connect() as conn:

            def count(table: Table) -> int:
                return conn.execute(select(func.count()).select_from(table)).scalar() or 0

            return StoreStats(
                policies=count(policies),
                versions=count(policy_versions),
                groups=count(groups),
                hosts=count(hosts),
                applied_records=count(applied_log),
                refused=self._refused,
            )
