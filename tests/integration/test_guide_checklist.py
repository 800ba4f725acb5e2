"""The migration guide's two open checklist items, as real tests:
"Test with BackgroundTasks only" and "Test with Celery fallback"."""

from __future__ import annotations

import base64
import math
import struct
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from scripts.harness.scaled_api import api, submit, wait_final, wait_route, worker

pytestmark = pytest.mark.integration


def audio_chunks() -> list[str]:
    samples = [int(12000 * math.sin(2 * math.pi * 300 * i / 16000)) for i in range(4000)]
    return [base64.b64encode(struct.pack(f"<{len(samples)}h", *samples)).decode()]


def test_with_background_tasks_only() -> None:
    """No broker, no Redis: every guide endpoint's task runs in-process to SUCCESS."""
    settings = Settings(store="memory", executor="background", scheduler="off", api_token=None)
    with TestClient(create_app(settings)) as client:
        accepted = [
            client.post("/process", json={"resource_id": "guide-1"}),
            client.post("/api/tasks/rating/recalculate"),
            client.post("/api/tasks/rating/recalculate", json={"resource_id": "guide-1"}),
            client.post("/api/tasks/impressions/sync"),
            client.post("/api/tasks/cleanup/sessions"),
        ]
        assert [response.status_code for response in accepted] == [202] * 5
        audio = submit(client, "process_speak_audio", "guide-1", audio_chunks(), "ada")
        ids = [response.json()["task_id"] for response in accepted] + [audio]
        records = [wait_final(client, task_id) for task_id in ids]

    assert {record["status"] for record in records} == {"SUCCESS"}
    assert {record["executor"] for record in records} == {"background"}


def test_with_celery_fallback(redis_url: str, tmp_path: Path) -> None:
    """Hybrid mode: with no worker the guide's heavy task falls back to in-process; once a
    worker is up the same call goes to Celery. Same code, configuration decides."""
    with api(redis_url) as client:
        local = wait_final(
            client, submit(client, "process_speak_audio", "guide-2", audio_chunks(), "ada")
        )
        metrics = client.get("/metrics").text
        assert local["status"] == "SUCCESS"
        assert local["executor"] == "background"
        assert 'reason="no_workers",task="process_speak_audio"' in metrics

        with worker(redis_url, tmp_path) as celery_worker:
            wait_route(client, "process_speak_audio", "celery", timeout=10)
            remote = wait_final(
                client, submit(client, "process_speak_audio", "guide-2", audio_chunks(), "bob")
            )
        assert remote["status"] == "SUCCESS"
        assert remote["executor"] == "celery"
        assert remote["worker"] == celery_worker.hostname
        resource = client.get("/api/resources/guide-2").json()
        assert resource["processed_by"] == "bob"
