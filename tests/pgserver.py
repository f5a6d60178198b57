"""A throwaway PostgreSQL server for the storage tests: initdb + pg_ctl in a temporary directory.

The server listens on 127.0.0.1 only, on a free port, with ``fsync=off`` (nothing it holds needs
to survive a crash) and password authentication (so that a wrong password can be tested).
PostgreSQL refuses to run as root: as root, every server command runs as the ``postgres`` user
through ``runuser``.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PASSWORD = "mlasdi-test"


def find_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: on PATH, or Debian's
    ``/usr/lib/postgresql/<version>/bin`` (newest version first); None when absent."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running server; :meth:`url` names a database on it, :meth:`create_database` makes one."""

    bin_dir: Path
    root: Path
    port: int
    as_postgres: bool
    initdb_s: float
    start_s: float

    def _cmd(self, *args: str) -> list[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_postgres else []
        return [*prefix, *args]

    def url(self, database: str = "postgres", *, password: str = PASSWORD) -> str:
        return f"postgresql+psycopg://postgres:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A fresh, empty database ``name``; returns its URL."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", password=PASSWORD, autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            self._cmd(
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.root / "data"),
                "-m",
                "immediate",
                "stop",
            ),
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.root, ignore_errors=True)


def start_server(bin_dir: Path) -> Server:
    """initdb, then pg_ctl start (waits until the server accepts connections)."""
    as_postgres = os.geteuid() == 0
    root = Path(tempfile.mkdtemp(prefix="mlasdi-pg-"))
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if as_postgres:
        shutil.chown(root, "postgres")
        shutil.chown(pwfile, "postgres")
    prefix = ["runuser", "-u", "postgres", "--"] if as_postgres else []
    t0 = time.perf_counter()
    subprocess.run(
        [
            *prefix,
            str(bin_dir / "initdb"),
            "-D",
            str(root / "data"),
            "-U",
            "postgres",
            "--pwfile",
            str(pwfile),
            "--auth",
            "scram-sha-256",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale",
            "C",
        ],
        check=True,
        capture_output=True,
    )
    initdb_s = time.perf_counter() - t0
    port = free_port()
    options = (
        f"-c listen_addresses=127.0.0.1 -c port={port} -c fsync=off -c synchronous_commit=off "
        f"-c full_page_writes=off -c unix_socket_directories={root}"
    )
    t0 = time.perf_counter()
    subprocess.run(
        [
            *prefix,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(root / "data"),
            "-o",
            options,
            "-l",
            str(root / "server.log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    start_s = time.perf_counter() - t0
    return Server(bin_dir, root, port, as_postgres, initdb_s, start_s)
