"""A throwaway PostgreSQL server for tests and benchmarks: temporary data directory, loopback port, no fsync.

openma's own suite and ``bench/stores.py`` start one with :meth:`PgServer.start`; an adapter author can do the
same to run the conformance kit on Postgres without Docker::

    from openma.testing.pgserver import PgServer

    with PgServer.start() as server:
        server.create_database("t1")
        url = server.url("t1")

* The server binaries are found with ``pg_config --bindir``, then ``/usr/lib/postgresql/<version>/bin``
  (newest first); ``OPENMA_PG_BINDIR`` overrides both. None found is :class:`PgServerUnavailable`, whose
  message says how to install them.
* PostgreSQL refuses to run as root: when the caller is root, ``initdb`` and ``postgres`` run as the
  ``postgres`` user and the data directory is handed to that user.
* Durability is traded for speed (``fsync``, ``synchronous_commit`` and ``full_page_writes`` off): a test
  server holds nothing worth keeping.
* The server is a direct child of the caller and is asked to die with it (``PR_SET_PDEATHSIG`` on Linux), so
  even a killed test run does not leave it behind; :meth:`PgServer.stop` stops it and removes the directory.

The admin helpers talk to the server with psycopg (the ``pg`` extra).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

INSTALL_HINT: Final = "apt-get install -y postgresql"

#: Server settings for a throwaway test server.
TEST_SERVER_SETTINGS: Final[dict[str, str]] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "64MB",
    "max_wal_size": "1GB",
    "checkpoint_timeout": "1h",
    "log_min_messages": "fatal",
}


class PgServerUnavailable(RuntimeError):
    """No PostgreSQL server binaries were found on this machine."""


def _bindir_ok(path: Path) -> bool:
    return (path / "initdb").is_file() and (path / "postgres").is_file()


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``, or ``None``."""
    override = os.environ.get("OPENMA_PG_BINDIR")
    if override:
        return Path(override) if _bindir_ok(Path(override)) else None
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            out = None
        if out is not None and _bindir_ok(Path(out.stdout.strip())):
            return Path(out.stdout.strip())

    def version(path: Path) -> tuple[int, ...]:
        try:
            return tuple(int(p) for p in path.parent.name.split("."))
        except ValueError:
            return (0,)

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    return next((c for c in candidates if _bindir_ok(c)), None)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """Run in the child between fork and exec: get SIGQUIT (immediate shutdown) if the parent dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGQUIT, 0, 0, 0)


class PgServer:
    """One running throwaway server. Build it with :meth:`start`; stop it with :meth:`stop` (or ``with``)."""

    def __init__(self, bindir: Path, root: Path, port: int, settings: dict[str, str]) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.socket_dir = root / "sock"
        self.log_path = root / "postgres.log"
        self.port = port
        self.settings = settings
        self.user = "postgres"
        self._process: subprocess.Popen[bytes] | None = None
        self._as_root = os.geteuid() == 0

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"PgServer(port={self.port}, root={str(self.root)!r}, {state})"

    # -- life cycle

    @classmethod
    def start(
        cls,
        *,
        bindir: Path | None = None,
        settings: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> PgServer:
        """initdb a temporary cluster and start it on a free loopback port; wait until it accepts connections."""
        found = bindir or find_bindir()
        if found is None:
            raise PgServerUnavailable(f"PostgreSQL server binaries not found; install them with: {INSTALL_HINT}")
        root = Path(tempfile.mkdtemp(prefix="openma-pg-"))
        server = cls(found, root, free_port(), {**TEST_SERVER_SETTINGS, **(settings or {})})
        try:
            server._initdb()
            server._spawn(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def _run_as(self) -> dict[str, Any]:
        if not self._as_root:
            return {}
        entry = pwd.getpwnam("postgres")
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _initdb(self) -> None:
        if self._as_root:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.socket_dir.mkdir()
        if self._as_root:
            os.chown(self.socket_dir, entry.pw_uid, entry.pw_gid)
        cmd = [
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=self.root, timeout=120, **self._run_as())
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed ({result.returncode}): {result.stderr.strip() or result.stdout}")

    def _command(self) -> list[str]:
        cmd = [str(self.bindir / "postgres"), "-D", str(self.data)]
        options = {
            **self.settings,
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.socket_dir),
        }
        for key, value in options.items():
            cmd += ["-c", f"{key}={value}"]
        return cmd

    def _spawn(self, timeout: float) -> None:
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                **self._run_as(),
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self._process.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                if (self.data / "postmaster.pid").read_text().rstrip().endswith("ready"):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not become ready in {timeout} s:\n{self.log_tail()}")
            time.sleep(0.02)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _shutdown(self, timeout: float = 15.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)  # fast shutdown: roll back open transactions, close connections
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGQUIT)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def halt(self) -> None:
        """Fast shutdown (every connection is dropped), keeping the data; :meth:`resume` starts it again."""
        self._shutdown()

    def resume(self, timeout: float = 30.0) -> None:
        """Start a halted server again, on the same port and data."""
        if not self.running:
            self._spawn(timeout)

    def restart(self, timeout: float = 30.0) -> None:
        """:meth:`halt` then :meth:`resume`."""
        self.halt()
        self.resume(timeout)

    def stop(self) -> None:
        """Stop the server (if running) and remove its directory. Idempotent."""
        try:
            self._shutdown()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- admin helpers (psycopg, autocommit, as the superuser)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres") -> Any:
        """A new psycopg (sync, autocommit) connection as the superuser; close it (or use ``with``)."""
        import psycopg

        return psycopg.connect(self.url(dbname), autocommit=True)

    def execute(self, sql: str, params: Sequence[Any] | None = None, *, dbname: str = "postgres") -> list[Any]:
        """Run one statement (or, without params, several) as the superuser and return its rows (tuples)."""
        with self.connect(dbname) as conn:
            cur = conn.execute(sql.encode(), params)
            return cur.fetchall() if cur.description is not None else []

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """Create database ``name`` (optionally as a copy of ``template``); return its URL."""
        sql = f'CREATE DATABASE "{name}"'
        if template is not None:
            sql += f' TEMPLATE "{template}" STRATEGY FILE_COPY'
        self.execute(sql)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def terminate_backends(self, dbname: str | None = None) -> int:
        """``pg_terminate_backend`` every client backend (of ``dbname``, or all but this one); wait until gone."""
        where = "backend_type = 'client backend' AND pid <> pg_backend_pid()"
        params: list[Any] = []
        if dbname is not None:
            where += " AND datname = %s"
            params.append(dbname)
        rows = self.execute(f"SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE {where}", params)
        pids = [r[0] for r in rows]
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline:
            alive = self.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [pids])[0][0]
            if alive == 0:
                break
            time.sleep(0.01)
        return len(pids)
