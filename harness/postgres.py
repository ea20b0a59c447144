"""A throw-away PostgreSQL server: Debian's binaries, a cluster in a temporary folder, TCP on
a free loopback port only (its unix socket in the same folder), one role and database of the
given name with a generated password, as the `postgres` image of deploy/compose.yaml makes
them (POSTGRES_USER, POSTGRES_PASSWORD). Torn down, folder and all, by `stop()`.

PostgreSQL refuses to run as root (CI containers often are): as root, the folder is given to
the `postgres` system user (Debian's package creates it) and initdb and the server run as that
user through `setpriv`, which execs in place, so the server is our direct child and a signal
reaches it. `make postgres` installs the package when it is missing.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg2

from harness.processes import ChildProcess
from orchestration.servers import free_port

# Debian installs each major version beside the others; the newest wins.
DEBIAN_ROOT = Path("/usr/lib/postgresql")
SYSTEM_USER = "postgres"


def postgres_bin() -> Path | None:
    """The folder of initdb and postgres: Debian's newest, else the one on PATH."""
    versions = sorted(
        (p for p in DEBIAN_ROOT.glob("*/bin") if (p / "postgres").is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1]
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PostgresServer:
    """`start()` makes the cluster and runs the server until `stop()`; the database is
    reached as NAME with `password` on 127.0.0.1:`port` (`dsn`, `url`)."""

    def __init__(self, name: str = "mlflow", password: str | None = None) -> None:
        self.name = name
        self.password = password or secrets.token_urlsafe(16)
        self.port = free_port()
        self.bin = postgres_bin()
        self.folder: Path | None = None
        self.process: ChildProcess | None = None

    @property
    def dsn(self) -> str:
        """libpq's URI of the database (what psycopg2.connect and psql take)."""
        return f"postgresql://{self.name}:{self.password}@127.0.0.1:{self.port}/{self.name}"

    @property
    def url(self) -> str:
        """SQLAlchemy's URL of the database, naming the driver: SQLAlchemy 2.1 takes a bare
        postgresql:// for psycopg 3, which is not installed; psycopg2-binary is."""
        return self.dsn.replace("postgresql://", "postgresql+psycopg2://", 1)

    def _as_owner(self, command: list[str]) -> list[str]:
        """`command` as the `postgres` system user when we are root, else as ourselves."""
        if os.geteuid() != 0:
            return command
        return ["setpriv", f"--reuid={SYSTEM_USER}", f"--regid={SYSTEM_USER}", "--init-groups"] + [
            "--reset-env",
            *command,
        ]

    def start(self, timeout_s: float = 60) -> None:
        if self.bin is None:
            raise RuntimeError(
                f"PostgreSQL is not installed (no {DEBIAN_ROOT}/*/bin/postgres, no initdb on "
                "PATH): run `make postgres` (apt-get install postgresql)"
            )
        # mkdtemp in /tmp: a short path (a unix socket's path is limited to ~100 bytes) that
        # the postgres user can reach (pytest's tmp_path is private to root).
        self.folder = Path(tempfile.mkdtemp(prefix="bertfleet-pg-"))
        data, log = self.folder / "data", self.folder / "postgres.log"
        password_file = self.folder / "password"
        password_file.write_text(self.password)
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                raise RuntimeError(
                    f"PostgreSQL refuses to run as root and there is no `{SYSTEM_USER}` user to "
                    "run it as: install Debian's package (`make postgres`) or run as another user"
                ) from None
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
            os.chown(password_file, owner.pw_uid, owner.pw_gid)
        done = subprocess.run(
            self._as_owner(
                [str(self.bin / "initdb"), "-D", str(data), "-U", self.name]
                + ["--pwfile", str(password_file), "--auth-host=scram-sha-256"]
                + ["--auth-local=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]
            ),
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=120,
        )
        password_file.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stderr[-3000:]}")
        self.process = ChildProcess(
            self._as_owner(
                [str(self.bin / "postgres"), "-D", str(data), "-p", str(self.port)]
                + ["-c", "listen_addresses=127.0.0.1"]
                + ["-c", f"unix_socket_directories={self.folder}"]
                + ["-c", "fsync=off", "-c", "full_page_writes=off"]  # throw-away data
            ),
            what="PostgreSQL",
            ready=self._accepts,
            log=log,
            timeout_s=timeout_s,
        )
        conn = self._connect("postgres")
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            conn.cursor().execute(f'CREATE DATABASE "{self.name}"')
        finally:
            conn.close()

    def _connect(self, database: str) -> Any:
        return psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.name,
            password=self.password,
            dbname=database,
            connect_timeout=3,
        )

    def _accepts(self) -> bool:
        try:
            self._connect("postgres").close()
            return True
        except psycopg2.OperationalError:  # not listening yet, or still starting up
            return False

    def stop(self) -> None:
        """Fast shutdown (SIGINT: roll back, disconnect, exit), then the folder goes."""
        if self.process is not None and self.process.proc.poll() is None:
            try:
                self.process.interrupt(wait_s=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
