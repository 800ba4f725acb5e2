"""PriorityGate (the in-process runner's slots): lowest priority number first, first come first
served within a level, and a waiter that is cancelled never loses or leaks a slot."""

from __future__ import annotations

import asyncio

import pytest

from app.core.tasks.executors.gate import PriorityGate


async def _holder(gate: PriorityGate, priority: int, label: str, order: list[str]) -> None:
    async with gate.slot(priority):
        order.append(label)
        await asyncio.sleep(0)


async def _taken_gate_with_waiters(
    *priorities: int,
) -> tuple[PriorityGate, list[asyncio.Task[None]]]:
    """A one-slot gate whose slot is held, and one waiter per priority, queued in order."""
    gate = PriorityGate(1)
    await gate.acquire(4)
    waiters = [asyncio.create_task(gate.acquire(priority)) for priority in priorities]
    await asyncio.sleep(0)
    return gate, waiters


@pytest.mark.asyncio
async def test_waiters_enter_by_priority_then_by_arrival() -> None:
    gate = PriorityGate(1)
    order: list[str] = []
    await gate.acquire(5)  # the slot is taken: everyone below waits
    arrivals = [(9, "9a"), (4, "4a"), (9, "9b"), (0, "0a"), (4, "4b"), (0, "0b")]
    jobs = [asyncio.create_task(_holder(gate, p, label, order)) for p, label in arrivals]
    await asyncio.sleep(0)
    assert gate.waiting == len(arrivals)

    gate.release()
    await asyncio.gather(*jobs)

    assert order == ["0a", "0b", "4a", "4b", "9a", "9b"]
    assert gate.waiting == 0


@pytest.mark.asyncio
async def test_free_slots_are_taken_at_once_up_to_the_limit() -> None:
    gate = PriorityGate(2)
    await gate.acquire(9)
    await gate.acquire(9)
    third = asyncio.create_task(gate.acquire(0))
    await asyncio.sleep(0)
    assert not third.done()
    gate.release()
    await third
    assert third.done()


@pytest.mark.asyncio
async def test_a_cancelled_waiter_is_skipped_and_the_slot_goes_on() -> None:
    gate, (dropped, kept) = await _taken_gate_with_waiters(0, 9)
    dropped.cancel()
    await asyncio.sleep(0)
    assert gate.waiting == 1

    gate.release()
    await kept
    gate.release()
    await asyncio.wait_for(gate.acquire(4), 1)  # the slot came back free


@pytest.mark.asyncio
async def test_a_waiter_cancelled_after_its_slot_was_granted_passes_it_on() -> None:
    gate, (first, second) = await _taken_gate_with_waiters(0, 1)
    gate.release()  # grants `first` ...
    first.cancel()  # ... which is cancelled before it resumes
    await asyncio.wait_for(second, 1)
    assert first.cancelled()
