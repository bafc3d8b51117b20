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


class RedisServer:
    """A ``redis-server`` of the test's own on a spare loopback port, stopped
    and started by its pid, never the shared one.

    By default it keeps nothing on disk (``--save "" --appendonly no``); with
    ``durable`` it keeps an append-only file in ``folder``, fsynced on every
    write, so a restart on the same port finds what was written before the
    stop. ``args`` go to ``redis-server`` as they are (``"--requirepass",
    "x"``).
    """

    def __init__(self, folder: Path, *args: str, durable: bool = False) -> None:
        if shutil.which("redis-server") is None:
            _missing("redis-server is not on PATH")
        self.folder = folder
        self.args = args
        self.durable = durable
        self.port = spare_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import time

        assert self.process is None
        keeping = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.durable
            else ["--appendonly", "no"]
        )
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *keeping, "--dir", str(self.folder), "--logfile", str(self.folder / "redis.log"),
             # Acts on SIGTERM within milliseconds, not at the next 100 ms tick.
             "--hz", "100", *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe:
                    probe.sendall(b"PING\r\n")
                    # Up: it answers, or asks for the password it was given.
                    if probe.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"redis-server did not start on {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None
