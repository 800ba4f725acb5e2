"""A sensitive task (@task(sensitive=True)) on a real `tasklane worker`: Celery's own log lines
("Task ... received" with its argsrepr/kwargsrepr, "Task ... succeeded in ...: <result>")
show the redaction marker, never the values, on every way a message reaches the broker:
pushed with its record (broker = the store's Redis), send_task (the broker is another Redis
database), and a legacy `.delay()` call. The record itself keeps the real values."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from app.config import Settings
from app.core.tasks import TaskResult, TaskStatus
from app.core.tasks.redaction import REDACTED
from app.wiring import build_task_manager
from scripts.harness.celery_processes import SAMPLE_TASK_MODULES, CeleryWorker
from scripts.harness.processes import clean_environment, run_python

pytestmark = pytest.mark.integration


def other_database(url: str) -> str:
    return url.rsplit("/", 1)[0] + "/1"


def submit_and_wait(broker_url: str, store_url: str, publish: str, *values: str) -> TaskResult:
    """Submit celery_secret through the api's manager (celery executor) and wait for it."""
    settings = Settings(
        executor="celery",
        store="redis",
        redis_url=store_url,
        celery_broker_url=broker_url,
        task_modules=SAMPLE_TASK_MODULES.split(","),
        scheduler="off",
    )

    async def run() -> TaskResult:
        manager = build_task_manager(settings)
        await manager.start()
        try:
            assert manager.executor.describe()["publish"].startswith(publish)
            task_id = await manager.submit("celery_secret", values[0], pin=values[1])
            return await manager.wait(task_id, timeout=30)
        finally:
            await manager.stop(grace=0)

    return asyncio.run(run())


def delay_in_a_subprocess(redis_url: str, *values: str) -> str:
    caller = (
        "from app.workers.tasks import bound\n"
        f"print(bound['celery_secret'].delay({values[0]!r}, pin={values[1]!r}).id)\n"
    )
    env = clean_environment(
        CELERY_BROKER_URL=redis_url, REDIS_URL=redis_url, TASKLANE_TASK_MODULES=SAMPLE_TASK_MODULES
    )
    published = run_python(caller, env=env, check=True)
    return published.stdout.strip().splitlines()[-1]


def wait_for_line(worker: CeleryWorker, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in worker.log():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{worker.log()[-4000:]}"
        time.sleep(0.2)


def assert_logged_redacted(worker: CeleryWorker, task_id: str, secrets: list[str]) -> None:
    wait_for_line(worker, f"celery_secret[{task_id}] succeeded in")
    log = worker.log()
    assert f"celery_secret[{task_id}] received" in log
    lines = [line for line in log.splitlines() if task_id in line]
    assert any(REDACTED in line and "received" in line for line in lines), lines
    assert any(REDACTED in line and "succeeded" in line for line in lines), lines
    for secret in secrets:
        assert secret not in log


def values() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:10]
    return f"hunter2-{tag}", f"pin-{tag}"


def test_with_the_record_and_legacy_delay(redis_url: str, tmp_path: Path) -> None:
    with CeleryWorker(redis_url, log_path=tmp_path / "worker.log", launcher="tasklane") as worker:
        password, pin = values()
        record = submit_and_wait(redis_url, redis_url, "with the record", password, pin)
        assert (record.status, record.result) == (TaskStatus.SUCCESS, f"derived-{password}-{pin}")
        assert (record.args, record.kwargs) == ([password], {"pin": pin})  # the store keeps them
        assert_logged_redacted(worker, record.task_id, [password, pin, record.result])

        password, pin = values()
        task_id = delay_in_a_subprocess(redis_url, password, pin)
        assert_logged_redacted(worker, task_id, [password, pin])


def test_with_send_task_on_another_broker_database(redis_url: str, tmp_path: Path) -> None:
    broker = other_database(redis_url)
    log_path = tmp_path / "worker.log"
    with CeleryWorker(
        broker, log_path=log_path, env={"REDIS_URL": redis_url}, launcher="tasklane"
    ) as worker:
        password, pin = values()
        record = submit_and_wait(broker, redis_url, "send_task", password, pin)
        assert (record.status, record.result) == (TaskStatus.SUCCESS, f"derived-{password}-{pin}")
        assert_logged_redacted(worker, record.task_id, [password, pin, record.result])
