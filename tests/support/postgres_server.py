"""A real, throwaway PostgreSQL server for the tests: `instance()` starts one per test process (on first
use) and stops it at exit; `database()` gives a test an empty database and drops it afterwards.

Where the server comes from, first match wins:
- $LASTRANK_TEST_POSTGRES_URL: an existing server (e.g. a CI service); the tests create databases in it.
- PostgreSQL's own binaries: $LASTRANK_TEST_PG_BINDIR, else /usr/lib/postgresql/<newest>/bin (Debian's
  `postgresql-15` package), else `initdb`/`pg_ctl` on PATH. `initdb` and `postgres` refuse to run as root,
  so as root they run as the `postgres` user (or `nobody`) through `runuser`, in a temporary folder that
  user owns. The cluster listens on 127.0.0.1 on a free port and is started with fsync=off: these tests
  check what the store sends and when it commits, not the disk under a crashing database server.

No server at all is an error with instructions, never a skip: the PostgreSQL store's tests must run.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from support.server_process import free_port

URL_ENV = "LASTRANK_TEST_POSTGRES_URL"
BINDIR_ENV = "LASTRANK_TEST_PG_BINDIR"

_HOW_TO_INSTALL = (
    "the PostgreSQL store's tests need a PostgreSQL server: install it (Debian/Ubuntu: apt-get install -y "
    f"postgresql-15; scripts/test.sh does this as root), point ${BINDIR_ENV} at a folder holding initdb and "
    f"pg_ctl, or set ${URL_ENV} to a server's URL"
)


class PostgresUnavailable(RuntimeError):
    pass


def _bindir() -> Path:
    if os.environ.get(BINDIR_ENV):
        return Path(os.environ[BINDIR_ENV])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PostgresUnavailable(_HOW_TO_INSTALL)


class LocalPostgres:
    """A cluster in a temporary folder, run by this test process."""

    def __init__(self):
        self.bindir = _bindir()
        self.user = None
        if os.geteuid() == 0:  # root: run the server as an unprivileged user
            for name in ("postgres", "nobody"):
                try:
                    self.user = pwd.getpwnam(name)
                    break
                except KeyError:
                    continue
            if self.user is None:
                raise PostgresUnavailable("running as root and there is no 'postgres' or 'nobody' user to run PostgreSQL as")
        # /tmp, not $TMPDIR: the server's user must be able to reach the folder (a root-only $TMPDIR would
        # stop it), and the Unix socket path inside it must stay under ~100 characters
        self.dir = Path(tempfile.mkdtemp(prefix="lastrank-pg-", dir="/tmp" if os.path.isdir("/tmp") else None))
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._run(["initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8",
                   "--locale=C"])
        for _ in range(5):  # a free port can be taken between the check and the start: retry
            self.port = free_port()
            if self._start().returncode == 0:
                break
        else:
            raise PostgresUnavailable(f"PostgreSQL did not start:\n{self.log.read_text(errors='replace')[-2000:]}")
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._watch()

    def _start(self) -> subprocess.CompletedProcess:
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off -c max_connections=200")
        return self._run(["pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options,
                          "start"], check=False)

    def halt(self) -> None:
        """Stop the server as a crash would (`pg_ctl stop -m immediate`), keeping its data for start_again()."""
        self._run(["pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"])

    def start_again(self) -> None:
        """Start a halted server on the same port (crash recovery replays its WAL)."""
        done = self._start()
        if done.returncode != 0:
            raise PostgresUnavailable(f"PostgreSQL did not start again:\n{self.log.read_text(errors='replace')[-2000:]}")

    def _watch(self) -> None:
        """Stop the cluster when this process ends however it ends (atexit does not run on SIGTERM or
        SIGKILL): a detached shell polls for this process and then stops the server and removes its folder."""
        stop = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"]
        if self.user is not None:
            stop = ["runuser", "-u", self.user.pw_name, "--", *stop]
        script = (f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; "
                  f"{shlex.join(stop)} >/dev/null 2>&1; rm -rf {shlex.quote(str(self.dir))}")
        subprocess.Popen(["sh", "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        argv = [str(self.bindir / argv[0]), *argv[1:]]
        if self.user is not None:
            argv = ["runuser", "-u", self.user.pw_name, "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=self.dir)
        if check and done.returncode != 0:
            raise PostgresUnavailable(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
        return done

    def new_database(self) -> str:
        return _create_database(self.admin_url)

    def stop(self) -> None:
        self._run(["pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


class ExistingPostgres:
    """A server someone else runs, named by $LASTRANK_TEST_POSTGRES_URL (its user may create databases)."""

    def __init__(self, url: str):
        self.admin_url = url

    def new_database(self) -> str:
        return _create_database(self.admin_url)

    def stop(self) -> None:
        pass


def drop_database(url: str) -> None:
    """Drop a database made by new_database (its connections are cut: a failed test may leave some)."""
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    with psycopg.connect(parts._replace(path="/postgres").geturl(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def database():
    """A fresh, empty database of this process's server for the length of the block; dropped after it."""
    url = instance().new_database()
    try:
        yield url
    finally:
        drop_database(url)


@contextmanager
def private_server():
    """A PostgreSQL server of its own for the length of the block (a LocalPostgres: halt() / start_again()),
    for a test that stops the database server under a running lastrank; the shared instance() stays up."""
    server = LocalPostgres()
    try:
        yield server
    finally:
        server.stop()


def _create_database(admin_url: str) -> str:
    """A new, empty database on the server of `admin_url` (a URL); returns its URL (same user, host, options)."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlsplit(admin_url)._replace(path=f"/{name}").geturl()


_instance = None
_lock = threading.Lock()


def instance():
    """The server of this test process, started on first use and stopped at exit."""
    global _instance
    with _lock:
        if _instance is None:
            url = os.environ.get(URL_ENV)
            _instance = ExistingPostgres(url) if url else LocalPostgres()
            atexit.register(_instance.stop)
        return _instance
