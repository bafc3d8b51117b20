"""A process of the spool outage tests: an app with one store and a small
queue, sending requests through the test client, printing its store's stats
as JSON when it stops.

``python spool_site.py INSTANCE redis|sql URL TABLE FIRST COUNT [options]``:
requests ``/page/FIRST`` .. ``/page/FIRST+COUNT-1``.

``--fsize N``: a file size limit of N bytes (a full disk under the spool);
``--replay``: before stopping, wait until no spool file is left in the
store's spool folder; ``--forever``: keep sending (printing each number
sent) until killed.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from flask import Flask

from flask_traffic import Traffic
from flask_traffic.stores import RedisStore, SQLStore


def main(argv: list[str]) -> None:
    instance, kind, url, table, first, count, *options = argv
    app = Flask("site", instance_path=instance)
    app.config.update(
        TRAFFIC_MAX_QUEUE_SIZE=200, TRAFFIC_MAX_BATCH_SIZE=50, TRAFFIC_SCHEDULE_DELAY=0.05
    )
    app.add_url_rule("/page/<int:n>", "page", lambda n: "ok")
    if "--fsize" in options:
        limit = int(options[options.index("--fsize") + 1])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    store = (
        RedisStore(url=url, event_name=table)
        if kind == "redis"
        else SQLStore(database_url=url, database_table_name=table)
    )
    traffic = Traffic(app, stores=store)
    client = app.test_client()
    answered = 0
    start = int(first)
    if "--forever" in options:
        n = start
        while True:
            if client.get(f"/page/{n}").status_code == 200:
                print(n, flush=True)
            n += 1
            time.sleep(0.001)
    for n in range(start, start + int(count)):
        answered += client.get(f"/page/{n}").status_code == 200
        time.sleep(0.001)  # requests flow (the test client alone is ~3,000/s)
    if "--replay" in options:
        folder = Path(instance) / "traffic-spool" / store.name
        deadline = time.monotonic() + 120
        while list(folder.glob("*.spool")) and time.monotonic() < deadline:
            time.sleep(0.05)
        store.flush(30)
    traffic.shutdown(app, 10)
    print(json.dumps({"answered": answered, **store.stats()}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
