"""Database servers of a test's own, on spare loopback ports, to stop and
start at will: the shared ones are never stopped."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest


def spare_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _missing(what: str) -> None:
    # Under CI a missing tool is a failure, as a missing service is.
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}; CI needs it.")
    pytest.skip(f"{what}.")


class PostgreSQLCluster:
    """A PostgreSQL cluster in a folder of its own (trust auth, user
    ``postgres``), made with ``initdb``; not running until :meth:`start`."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            _missing("PostgreSQL's initdb is not installed")
        self.bin = Path(found[-1]).parent
        self.port = spare_port()
        # The server refuses to run as root: the folder is the postgres user's.
        self.folder = Path(tempfile.mkdtemp(prefix="traffic-pg-"))
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            if shutil.which("runuser") is None:
                _missing("runuser is missing to run PostgreSQL as its own user")
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(
            "initdb", "-D", str(self.folder / "data"), "-U", "postgres", "--auth=trust", "--no-sync"
        )
        self.running = False

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.folder / "data"),
            "-o",
            options,
            "-w",
            "-l",
            str(self.folder / "log"),
            "start",
        )
        self.running = True

    def stop(self) -> None:
        if self.running:
            self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")
            self.running = False

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
