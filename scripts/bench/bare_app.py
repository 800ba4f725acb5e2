"""The baseline of benchmark (d): what an application writes without tasklane.

A FastAPI endpoint taking the same JSON body as POST /api/tasks, scheduling an async no-op with
Starlette's BackgroundTasks.add_task and answering 202 with an id, served by the same uvicorn
(`python -m uvicorn scripts.bench.bare_app:app`, access log on like `tasklane serve`).
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import BackgroundTasks, FastAPI
from pydantic import BaseModel, Field

app = FastAPI(title="bench baseline")


class SubmitBody(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)


async def noop(*args: Any, **kwargs: Any) -> None:
    """The twin of scripts.bench.tasks.bench_noop_async."""


@app.post("/api/tasks", status_code=202)
async def submit(body: SubmitBody, background_tasks: BackgroundTasks) -> dict[str, str]:
    task_id = str(uuid.uuid4())
    background_tasks.add_task(noop, *body.args, **body.kwargs)
    return {"task_id": task_id, "status": "PENDING", "status_url": f"/api/tasks/{task_id}"}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
