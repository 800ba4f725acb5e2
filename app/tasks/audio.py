"""process_speak_audio: analyse a spoken recording and store the result on its resource.

Heavy (CPU-bound decoding and level analysis), so in scaled mode it runs on a Celery worker;
the analysis itself runs on a thread so an in-process run never blocks the api's event loop.
Idempotent: a re-run analyses the same audio again and writes the same result. The audio is
kept out of API answers and log lines (sensitive): a status answer would otherwise echo
megabytes of base64.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from app.core.tasks import TaskContext, task
from app.tasks.audio_analysis import analyse_pcm16
from app.tasks.data import get_domain_data
from app.tasks.data.common import now_iso

log = logging.getLogger("tasklane.tasks.audio")


@task(weight="heavy", idempotent=True, timeout=300, takes_context=True, sensitive=("audio_chunks",))
async def process_speak_audio(
    ctx: TaskContext,
    resource_id: str,
    audio_chunks: list[str],
    user_name: str | None = None,
    sample_rate: int = 16_000,
) -> dict[str, object]:
    """Analyse base64 PCM16 mono chunks; the resource ends "processed" with an `analysis`.

    Any error marks the resource "failed" with a `failure_reason` and is re-raised, so the task
    record ends FAILURE too.
    """
    data = get_domain_data()
    fields = {"task_id": ctx.task_id, "resource_id": resource_id, "chunks": len(audio_chunks)}
    log.info("audio processing started", extra=fields)
    try:
        await data.update_resource(
            resource_id,
            {"status": "processing", "processing_task": ctx.task_id, "updated_at": now_iso()},
        )
        await ctx.aprogress(0.1, "decoding audio")
        analysis = await asyncio.to_thread(analyse_pcm16, audio_chunks, sample_rate=sample_rate)
        log.info("audio analysed", extra={**fields, **analysis.to_dict()})
        await ctx.aprogress(0.9, "storing analysis")
        await data.update_resource(
            resource_id,
            {
                "status": "processed",
                "analysis": analysis.to_dict(),
                "processed_by": user_name,
                "failure_reason": None,
                "updated_at": now_iso(),
            },
        )
    except asyncio.CancelledError:
        # Cancelled, timed out or shut down: do not leave the resource "processing" forever.
        await _mark_failed(resource_id, "stopped before finishing (cancelled or timed out)")
        raise
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("audio processing failed", extra={**fields, "reason": reason})
        await _mark_failed(resource_id, reason)
        raise
    await ctx.aprogress(1.0, "done")
    log.info("audio processing finished", extra={**fields, "status": "processed"})
    return {"resource_id": resource_id, "status": "processed", "analysis": analysis.to_dict()}


async def _mark_failed(resource_id: str, reason: str) -> None:
    # Best effort: when the data store itself is what failed, the original error matters more.
    with contextlib.suppress(Exception):
        await get_domain_data().update_resource(
            resource_id,
            {"status": "failed", "failure_reason": reason[:500], "updated_at": now_iso()},
        )
