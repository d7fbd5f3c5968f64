"""PostgreSQL from the machine's Debian packages, on its own data dir and port.

PostgreSQL refuses to run as root, so ``initdb`` and the server run as the ``postgres`` system
user (``runuser -u postgres --``) on a data dir it owns. That data dir lives in the state dir when
the ``postgres`` user can reach it, else under ``/var/tmp/erynoa-<hash of state dir>/`` (the choice
is remembered). The machine's own cluster is never touched.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from erynoa.stack import procs
from erynoa.stack.base import Echo, Service, StackError, run_tool

PG_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "erynoa"
DEFAULT_DATABASE = "erynoa"
_SOCKET_PATH_MAX = 100  # a unix socket path must fit in 107 bytes


def bin_dir() -> Path:
    """The newest installed PostgreSQL server's bin dir."""
    found = [p.parent for p in PG_ROOT.glob("*/bin/postgres") if p.parent.parent.name.isdigit()]
    if not found:
        raise StackError(
            f"PostgreSQL server not found in {PG_ROOT}: install it with "
            "`apt-get install -y postgresql`"
        )
    return max(found, key=lambda p: int(p.parent.name))


def _as_postgres(*argv: str | Path) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *map(str, argv)]


class Postgres(Service):
    name = "postgres"
    port_settings = ("postgres_port",)
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back open transactions, checkpoint, exit
    stop_timeout = 60.0

    @property
    def _location_file(self) -> Path:
        return self.paths.state_dir / "postgres.location"

    @property
    def home(self) -> Path:
        """Where the data dir lives (remembered once chosen)."""
        try:
            return Path(self._location_file.read_text().strip())
        except OSError:
            return super().home

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def socket_dir(self) -> str:
        # Inside the data dir; if that path is too long for a socket, TCP only.
        return str(self.data_dir) if len(str(self.data_dir)) < _SOCKET_PATH_MAX else ""

    def _postgres_can_reach_state_dir(self) -> bool:
        probe = _as_postgres("test", "-x", self.paths.state_dir)
        return subprocess.run(probe, capture_output=True, check=False).returncode == 0

    def prepare(self, echo: Echo) -> None:
        bins = bin_dir()
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise StackError(
                "no `postgres` system user: install PostgreSQL with `apt-get install -y postgresql`"
            ) from None
        if not self._location_file.exists():
            home = super().home
            if not self._postgres_can_reach_state_dir():
                home = self.paths.outside_dir / "postgres"
                echo(
                    f"postgres: the postgres user cannot reach {self.paths.state_dir}; "
                    f"data dir goes to {home}"
                )
            self._location_file.write_text(f"{home}\n")
        done = self.home / "initdb.done"
        if done.exists():
            self._check_version(bins)
            return
        shutil.rmtree(self.data_dir, ignore_errors=True)  # a half-done initdb
        self.data_dir.mkdir(parents=True)
        for path in (self.home.parent, self.home):  # traversable by postgres, whatever umask
            if path != self.paths.state_dir:
                if path.stat().st_uid != os.getuid():
                    raise StackError(f"postgres: {path} belongs to another user; remove it")
                path.chmod(0o755)
        os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
        self.data_dir.chmod(0o700)
        echo(f"postgres: initdb {self.data_dir} ({bins.parent.name})")
        run_tool(
            _as_postgres(bins / "initdb", "-D", self.data_dir, f"--username={SUPERUSER}",
                         "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"),
            self.paths.logs / "postgres-initdb.log",
            "initdb",
            cwd=self.data_dir,
        )  # fmt: skip
        done.write_text(bins.parent.name + "\n")

    def _check_version(self, bins: Path) -> None:
        data_version = (self.data_dir / "PG_VERSION").read_text().strip()
        if data_version != bins.parent.name:
            raise StackError(
                f"postgres: {self.data_dir} was made by PostgreSQL {data_version} but "
                f"{bins.parent.name} is installed; run `erynoa stack clean` to start afresh"
            )

    def command(self) -> list[str]:
        return _as_postgres(
            bin_dir() / "postgres",
            "-D", self.data_dir,
            "-c", "listen_addresses=127.0.0.1",
            "-c", f"port={self.port}",
            "-c", f"unix_socket_directories={self.socket_dir}",
            "-c", "logging_collector=off",
            # Two copies of the system (a test session's and a load test's) with full pools
            # pass the default of 100.
            "-c", "max_connections=300",
        )  # fmt: skip

    def cwd(self) -> Path:
        return self.data_dir

    def healthy(self) -> bool:
        probe = [str(bin_dir() / "pg_isready"), "-q", "-t", "2", "-h", "127.0.0.1",
                 "-p", str(self.port), "-U", SUPERUSER, "-d", "postgres"]  # fmt: skip
        return subprocess.run(probe, capture_output=True, check=False).returncode == 0

    def databases(self) -> list[str]:
        """``erynoa`` and the database named by ``database_url`` when it points at this stack."""
        names = [DEFAULT_DATABASE]
        url = urlsplit(self.settings.database_url)
        if url.hostname in ("127.0.0.1", "localhost") and url.port == self.port:
            name = url.path.lstrip("/")
            if re.fullmatch(r"[A-Za-z0-9_]+", name) and name not in names:
                names.append(name)
        return names

    def _psql(self, sql: str) -> str:
        argv = [str(bin_dir() / "psql"), "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1",
                "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", "postgres",
                "-c", sql]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise StackError(f"postgres: `{sql}` failed: {done.stderr.strip()}")
        return done.stdout

    def after_healthy(self, echo: Echo) -> None:
        existing = set(self._psql("SELECT datname FROM pg_database").split())
        for name in self.databases():
            if name not in existing:
                self._psql(f'CREATE DATABASE "{name}"')
                echo(f"postgres: created database {name}")

    def note(self) -> str | None:
        if self.home.is_relative_to(self.paths.state_dir):
            return None
        return f"data in {self.data_dir} (the postgres user cannot reach the state dir)"

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, record: procs.PidRecord) -> bool:
        # Signal the postmaster itself: `runuser` would answer a signal by killing its child
        # two seconds later, too soon for a checkpoint.
        tracked = procs.members(record.pid)
        postmaster = self._postmaster_pid()
        if postmaster is None or postmaster not in tracked:
            return super().stop(record)
        os.kill(postmaster, self.stop_signal)
        if procs.wait_gone(record.pid, tracked, self.stop_timeout):
            return True
        os.kill(postmaster, signal.SIGQUIT)  # immediate shutdown
        if not procs.wait_gone(record.pid, tracked, 5):
            procs.kill_all(record.pid, tracked)
        return False
