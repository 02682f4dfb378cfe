"""The peer for scripts/bench.sh row 7: Debian's python3-celery on trainq's RabbitMQ.

A no-op task on its own queue (BENCH_QUEUE). Every worker process appends the time it
finished each task to BENCH_MARKS.<pid> (one line per task), so tests/bench/bench.py can
compute the processing rate of a prefork worker without a result backend. Messages are JSON.
"""

import os
import time

from celery import Celery, signals

app = Celery("tqbench", broker=os.environ["BENCH_BROKER"])
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_default_queue=os.environ.get("BENCH_QUEUE", "tqbench.celery"),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="tqbench.noop")
def noop(i):
    return None


_marks = {"f": None}


@signals.task_postrun.connect
def _mark(sender=None, args=None, **_kw):
    if not args or args[0] < 0:  # the publisher's warm-up message
        return
    if _marks["f"] is None:
        _marks["f"] = open(f"{os.environ['BENCH_MARKS']}.{os.getpid()}", "a", buffering=1)
    _marks["f"].write(f"{time.time():.6f}\n")
