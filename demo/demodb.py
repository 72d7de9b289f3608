"""PostgreSQL for the demo: a throw-away cluster from the Debian package, inside server-b.

The cluster is created with ``initdb`` as the ``postgres`` user (through runuser) in the
lab's work directory, listens on server-b's address only, and lets the ``webapp`` role in
from server-a's address with SCRAM (the password never crosses the wire, the SQL does:
that is what the demo wants to show). ``ssl = off`` so phase 1 shows plaintext honestly.
A local Unix socket in the work directory is used by the driver to create the ``orders``
database and its rows; it is reachable from the root namespace because Unix sockets are
not network-namespaced.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass

from demolab import Host, Lab, LabError, sh

ORDERS = [
    ("ACME Corp", "steel bolts M8", 400),
    ("Globex", "hydraulic pump", 2),
    ("Initech", "TPS report covers", 1500),
    ("Umbrella", "glass vials", 96),
]


def pg_bindir() -> str:
    """The newest installed PostgreSQL server binaries (Debian layout)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if not found:
        raise LabError("PostgreSQL is not installed (Debian package postgresql)")
    return os.path.dirname(found[-1])


@dataclass
class Database:
    """One PostgreSQL cluster in ``host``'s namespace, reachable from ``client_addr``."""

    lab: Lab
    host: Host
    client_addr: str
    marker: str  #: recognisable text stored in every row, looked for in captures
    user: str = "webapp"
    dbname: str = "orders"
    port: int = 5432

    def __post_init__(self) -> None:
        self.password = secrets.token_urlsafe(18)
        self.datadir = self.lab.path("pgdata")
        self.sockdir = self.lab.path("pgsock")
        self.log = self.lab.path("postgres.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.bindir = pg_bindir()

    def dsn(self) -> str:
        """Connection string for the web application (the password goes via PGPASSWORD)."""
        return (
            f"host={self.host.addr} port={self.port} dbname={self.dbname} user={self.user} "
            "sslmode=disable connect_timeout=10"
        )

    def create(self) -> None:
        """initdb as postgres, then restrict pg_hba.conf to the web application's address."""
        pw = pwd.getpwnam("postgres")
        for path in (self.datadir, self.sockdir):
            os.mkdir(path, 0o700)
            os.chown(path, pw.pw_uid, pw.pw_gid)
        # inside server-b's namespace, so that cleanup finds it even if interrupted
        self.lab.run(
            self.host.ns,
            [
                "runuser", "-u", "postgres", "--",
                os.path.join(self.bindir, "initdb"),
                "-D", self.datadir, "-U", "postgres", "-E", "UTF8", "--locale=C",
                "--auth-local=trust", "--auth-host=reject", "--no-instructions",
                "--no-sync",  # a throw-away cluster: skip fsync, much faster
            ],
            timeout=120,
        )  # fmt: skip
        hba = os.path.join(self.datadir, "pg_hba.conf")
        with open(hba, "w") as handle:
            handle.write(
                "# written by the pyipsec demo\n"
                "local all postgres trust\n"
                f"host {self.dbname} {self.user} {self.client_addr}/32 scram-sha-256\n"
            )

    def start(self) -> None:
        """Run the postmaster in the namespace as postgres; wait until it accepts connections."""
        # setpriv execs (runuser forks a helper), so proc.pid is the postmaster's pid
        self.proc = self.lab.spawn(
            self.host.ns,
            [
                "setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
                os.path.join(self.bindir, "postgres"), "-D", self.datadir,
                "-c", f"listen_addresses={self.host.addr}", "-c", f"port={self.port}",
                "-c", f"unix_socket_directories={self.sockdir}", "-c", "ssl=off",
                "-c", "password_encryption=scram-sha-256",
            ],
            log=self.log,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LabError(f"postgres exited: {self.lab.tail(self.log)}")
            res = sh(
                [os.path.join(self.bindir, "pg_isready"), "-q", "-h", self.sockdir,
                 "-p", str(self.port)],
                check=False,
            )  # fmt: skip
            if res.returncode == 0:
                return
            time.sleep(0.2)
        raise LabError(f"postgres did not become ready: {self.lab.tail(self.log)}")

    def seed(self) -> None:
        """Create the role, the ``orders`` database and its rows (over the Unix socket)."""
        import psycopg
        from psycopg import sql

        admin = {"host": self.sockdir, "port": self.port, "user": "postgres"}
        with psycopg.connect(dbname="postgres", autocommit=True, **admin) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(self.user), sql.Literal(self.password)
                )
            )
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(self.dbname), sql.Identifier(self.user)
                )
            )
        with psycopg.connect(dbname=self.dbname, **admin) as conn:
            conn.execute(
                "CREATE TABLE orders (id serial PRIMARY KEY, customer text NOT NULL,"
                " item text NOT NULL, quantity integer NOT NULL, note text NOT NULL)"
            )
            conn.cursor().executemany(
                "INSERT INTO orders (customer, item, quantity, note) VALUES (%s, %s, %s, %s)",
                [(c, i, q, f"{self.marker} order {n}") for n, (c, i, q) in enumerate(ORDERS, 1)],
            )
            conn.execute(
                sql.SQL("ALTER TABLE orders OWNER TO {}").format(sql.Identifier(self.user))
            )

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster), SIGKILL if it hangs."""
        if self.proc is not None:
            self.lab.stop(self.proc, signal.SIGINT, wait=15)
            self.proc = None
