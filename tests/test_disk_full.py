"""A file store on a full disk: requests answered, nothing duplicated or torn."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from flask import Flask
    from flask_traffic import Traffic
    from flask_traffic.stores import CSVStore, JSONStore

    kind, folder = sys.argv[1], sys.argv[2]
    app = Flask("site", instance_path=folder)
    app.add_url_rule("/<int:n>", "page", lambda n: "ok")
    store = (JSONStore if kind == "json" else CSVStore)()
    traffic = Traffic(app, stores=store)
    client = app.test_client()
    statuses = [client.get("/0").status_code]
    assert store.flush(10)
    # The file may grow a little more, then every write() fails (EFBIG, as
    # on a full disk: Python ignores SIGXFSZ), usually in the middle of a
    # batch, a part of it written.
    limit = store.path.stat().st_size + 2500
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    for n in range(1, 200):
        statuses.append(client.get(f"/{n}").status_code)
    full = store.flush(3)
    failed = store.stats()["failed_exports"]
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again
    assert store.flush(60)
    paths = [row["request_path"] for row in store.read(1000)]
    print(json.dumps({"statuses": statuses, "paths": paths, "full": full, "failed": failed}))
    traffic.shutdown(app)
    """
)


@pytest.mark.parametrize("kind", ["json", "csv"])
def test_a_full_disk_neither_duplicates_nor_tears(
    kind: str, tmp_path: Path, fault_report: Callable[..., None]
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, kind, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(done.stdout.splitlines()[-1])
    fault_report(
        f"full disk under a {kind.upper()} store (RLIMIT_FSIZE)",
        answered=result["statuses"].count(200),
        expected=200,
        stored=len(set(result["paths"])),
        duplicates=len(result["paths"]) - len(set(result["paths"])),
    )
    assert result["statuses"] == [200] * 200
    assert result["full"] is False  # the disk was full for a while
    assert result["failed"] >= 1
    assert sorted(result["paths"], key=lambda p: int(p[1:])) == [f"/{n}" for n in range(200)]
    name = "traffic.json" if kind == "json" else "traffic.csv"
    text = (tmp_path / name).read_bytes()
    assert text.endswith(b"\n")
    lines = text.splitlines()
    assert len(lines) == 200 + (kind == "csv")  # one line a record (+ the CSV header)
