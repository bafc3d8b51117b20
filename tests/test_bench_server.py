"""The server benchmark's building blocks work: gunicorn boots the app with a
store, the load reaches it, and after SIGTERM the store holds one record per
request the workers answered (tests/benchmarks/bench_server.py)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))
import bench_server

pytestmark = pytest.mark.skipif(
    shutil.which("gunicorn") is None and not (Path(sys.executable).parent / "gunicorn").exists(),
    reason="gunicorn is not installed",
)


@pytest.mark.parametrize("load", ["wrk", "python"])
def test_a_short_run_keeps_every_record(tmp_path: Path, load: str) -> None:
    if load == "wrk" and shutil.which("wrk") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("wrk is not installed; CI needs it (see .ci/run).")
        pytest.skip("wrk is not installed")
    args = bench_server.parse_args(["--duration", "2", "--connections", "4", "--load", load])
    run = bench_server.one_run(args, "json", None, tmp_path, 0)
    assert run.load.errors == 0
    assert run.load.requests_per_s > 0
    assert 0 < run.load.p50_ms <= run.load.p99_ms
    assert run.requests > 0
    assert run.records == {"JSONStore": run.requests}
    assert not run.lost
    assert run.store_cpu_us > 0
