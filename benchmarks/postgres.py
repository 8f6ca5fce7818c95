"""A throwaway PostgreSQL cluster: a temporary folder, a free loopback port, no password (trust on loopback).

Used by the tests (the decision log against a real PostgreSQL: outages, migrations, two gateways on one
database) and by benchmarks/reliability.py (several gateways on one database under load). Debian's
`postgresql` package provides the binaries (`make install` installs it). PostgreSQL refuses to run as root,
so as root the cluster runs as the `postgres` user the package creates.
"""

from __future__ import annotations

import getpass
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from benchmarks.serving import free_ports


class PostgresUnavailable(RuntimeError):
    """PostgreSQL is not installed, or cannot run here (root without a `postgres` user)."""


def postgres_binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    path = found[-1] if found else shutil.which("initdb")
    return Path(path).parent if path else None


class PostgresCluster:
    """A throwaway PostgreSQL cluster in a temporary folder, on a loopback port, run as a non-root user."""

    def __init__(self):
        self.bin = postgres_binaries()
        if self.bin is None:
            raise PostgresUnavailable("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        self.user = "postgres" if os.geteuid() == 0 else getpass.getuser()
        if os.geteuid() == 0:
            try:
                self.account = pwd.getpwnam(self.user)
            except KeyError:
                raise PostgresUnavailable("running as root and there is no 'postgres' user to run PostgreSQL as")
        self.folder = Path(tempfile.mkdtemp(prefix="adaudit-postgres-"))
        self.port = free_ports(1)[0]
        self.url = f"postgresql+psycopg://adaudit@127.0.0.1:{self.port}/postgres"

    def run(self, *command: str) -> None:
        prefix = ["runuser", "-u", self.user, "--"] if os.geteuid() == 0 else []
        result = subprocess.run(prefix + [str(self.bin / command[0]), *command[1:]], capture_output=True, text=True,
                                timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: {result.stdout[-1500:]}{result.stderr[-1500:]}")

    @classmethod
    def started(cls, **start) -> "PostgresCluster":
        """A created and started cluster; PostgresUnavailable (nothing left behind) when it cannot run here."""
        cluster = cls()
        try:
            cluster.create()
            cluster.start(**start)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
            cluster.remove()
            raise PostgresUnavailable(f"a PostgreSQL cluster cannot start here: {error}") from error
        return cluster

    def create(self) -> "PostgresCluster":
        if os.geteuid() == 0:
            os.chown(self.folder, self.account.pw_uid, self.account.pw_gid)
        self.run("initdb", "-D", str(self.folder / "data"), "-U", "adaudit", "-A", "trust", "--no-sync", "-E", "UTF8")
        return self

    def start(self, max_connections: int = 100) -> None:
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                   f"-c max_connections={max_connections}")
        self.run("pg_ctl", "-D", str(self.folder / "data"), "-o", options, "-l", str(self.folder / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.folder / "data"), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        try:
            self.stop("immediate")
        except RuntimeError:
            pass
        shutil.rmtree(self.folder, ignore_errors=True)
