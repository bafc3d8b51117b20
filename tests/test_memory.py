"""Memory stays bounded whatever clients send."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import gc, json, sys
    from flask import Flask
    from flask_traffic import Traffic
    from flask_traffic.stores import CSVStore, JSONStore

    def rss_mb():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024

    app = Flask("site", instance_path=sys.argv[1])
    app.add_url_rule("/", "index", lambda: "ok")
    stores = [JSONStore(), CSVStore()]
    traffic = Traffic(app, stores=stores)
    client = app.test_client()

    def send(count, start):
        for n in range(start, start + count):
            # A new 8,000-byte user agent every time.
            agent = f"Mozilla/5.0 ({n}) " + "x" * (8000 - 20)
            client.get("/", headers={"User-Agent": agent, "Host": f"h{n}.example"})
        traffic.flush(app, 60)

    send(500, 0)
    gc.collect()
    before = rss_mb()
    send(int(sys.argv[2]), 500)
    gc.collect()
    after = rss_mb()
    print(json.dumps({"before": before, "after": after}))
    traffic.shutdown(app)
    """
)


def test_unique_huge_user_agents_do_not_grow_the_worker(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), "6000"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    figures = json.loads(done.stdout.splitlines()[-1])
    # 6,000 requests carry 48 MB of user agents; caches that kept them (and
    # what the stores made of them) grew a worker by several times that.
    assert figures["after"] - figures["before"] < 30, figures
