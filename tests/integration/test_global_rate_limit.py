"""Acceptance (issue 13, global rate limits): three real `celery worker` processes (prefork,
concurrency 2) and the in-process plane on one real redis-server, a task limited to 10/s, 300
submits over both planes (scripts/harness/rate_limit_run.py):

- in every one-second window of actual start times (the records' started_at) at most 10 + the
  burst (1) starts, across every process;
- every task ends SUCCESS, on both planes;
- while they wait, an unlimited task submitted to the same worker queue starts within 1 s
  (the waiting tasks hold no pool slot), and KEDA's view of the queue (its list plus its active
  set) holds no backlog of them: more workers could not make them faster;
- waiting used no attempt and no Celery retry (a retry is logged "retry: ..." by the worker);
- nothing is left behind: no waiting entry, no active entry, no queued message.

And a deferred message goes out again as it came: its priority (read from the delivered
message) and Celery retries count unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from app.core.tasks import TaskStatus
from app.workers.celery_config import TasklaneCelery
from scripts.harness.celery_processes import SAMPLE_TASK_MODULES, CeleryWorker
from scripts.harness.rate_limit_run import LIMIT_PER_SECOND, LIMITED, run
from tests.support.records import Records

pytestmark = pytest.mark.integration

TASKS = 300
BURST = 1
WORKERS, CONCURRENCY = 3, 2
#: Only that worker loads the notes module (imported here, it would change this process).
WITH_NOTES = f"{SAMPLE_TASK_MODULES},scripts.harness.republish_notes"


def test_one_limit_holds_across_three_workers_and_the_in_process_plane(
    redis_url: str, tmp_path: Path
) -> None:
    result = run(redis_url, tmp_path, tasks=TASKS, workers=WORKERS, concurrency=CONCURRENCY)

    assert result.statuses == {"SUCCESS": TASKS}
    assert result.attempts == {1}
    assert result.planes == {"background": TASKS // 2, "celery": TASKS // 2}
    assert result.most_in_one_second() <= LIMIT_PER_SECOND + BURST
    assert max(result.probe_waits) < 1.0, result.probe_waits
    # Six pool slots: a delivery being turned into its ETA message is the most KEDA may see.
    assert result.backlog[-1] <= WORKERS * CONCURRENCY, result.backlog
    for log in tmp_path.glob("worker-*.log"):
        assert "retry:" not in log.read_text(), log
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.zcard(f"tasklane:rate:{LIMITED}:waiting") == 0
    assert client.zcard("tasklane:active:light") == 0
    assert client.llen("light") == 0


def test_a_deferred_message_keeps_its_priority_and_is_no_celery_retry(
    redis_url: str, tmp_path: Path, records: Records, sender: TasklaneCelery
) -> None:
    made = [records.create(LIMITED, [n], "light") for n in range(5)]
    with CeleryWorker(
        redis_url, log_path=tmp_path / "worker.log", queues=("light",), task_modules=WITH_NOTES
    ) as worker:
        for record in made:
            sender.send_task(
                LIMITED, args=record.args, task_id=record.task_id, queue="light", priority=5
            )
        records.wait([r.task_id for r in made], {TaskStatus.SUCCESS}, worker)

    notes = [
        json.loads(note)
        for record in made
        for note in records.client.lrange(f"republished:{record.task_id}", 0, -1)
    ]
    assert notes, "no message was deferred"
    assert all(note == {"priority": 5, "retries": 0} for note in notes), notes
