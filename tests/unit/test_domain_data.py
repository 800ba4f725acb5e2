"""DomainData contract: every method on the memory backend and on a real redis-server.

The impressions tests pin the exactly-once rules sync_impressions_from_redis relies on: a
re-claim with the same batch id returns that batch, a second apply adds nothing, and a run
killed between claim and apply (or half-way through apply) finishes without double counting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from app.core.tasks.errors import StoreUnavailable
from app.tasks.data import DomainData
from app.tasks.data.memory import MemoryDomainData
from app.tasks.data.redis import _APPLY, RedisDomainData
from scripts.harness.processes import RedisServer, free_port


@pytest_asyncio.fixture(params=["memory", "redis"])
async def data(request: pytest.FixtureRequest) -> AsyncIterator[DomainData]:
    """Each test using it runs twice: in memory and on a real Redis."""
    if request.param == "memory":
        backend: DomainData = MemoryDomainData()
    else:
        backend = RedisDomainData(request.getfixturevalue("redis_url"), prefix="test:")
    yield backend
    await backend.close()


# -- resources -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_unknown_resource_is_none(data: DomainData) -> None:
    assert await data.get_resource("nope") is None
    assert await data.resource_ids() == []


@pytest.mark.asyncio
async def test_saved_resource_reads_back_with_an_impressions_total(data: DomainData) -> None:
    await data.save_resource({"id": "b", "status": "new", "tags": ["x"], "score": 0.1 + 0.2})
    await data.save_resource({"id": "a", "status": "new"})
    assert await data.get_resource("b") == {
        "id": "b",
        "status": "new",
        "tags": ["x"],
        "score": 0.1 + 0.2,
        "impressions": 0,
    }
    assert await data.resource_ids() == ["a", "b"]


@pytest.mark.asyncio
async def test_save_is_last_write_wins_but_never_sets_impressions(data: DomainData) -> None:
    await data.save_resource({"id": "r", "status": "new", "old": 1})
    await data.save_resource({"id": "r", "status": "done", "impressions": 999})
    assert await data.get_resource("r") == {"id": "r", "status": "done", "impressions": 0}


@pytest.mark.asyncio
async def test_save_without_an_id_is_refused(data: DomainData) -> None:
    with pytest.raises(ValueError, match="id"):
        await data.save_resource({"status": "new"})


@pytest.mark.asyncio
async def test_update_creates_then_merges(data: DomainData) -> None:
    created = await data.update_resource("r", {"rating": 4.0})
    assert created["status"] == "new"
    assert created["rating"] == 4.0
    merged = await data.update_resource("r", {"status": "processed", "id": "other"})
    assert merged["id"] == "r"
    assert merged["rating"] == 4.0
    assert merged["status"] == "processed"
    assert await data.get_resource("r") == merged
    assert await data.resource_ids() == ["r"]


@pytest.mark.asyncio
async def test_concurrent_updates_of_different_fields_all_survive(data: DomainData) -> None:
    await asyncio.gather(*(data.update_resource("r", {f"f{i}": i}) for i in range(20)))
    resource = await data.get_resource("r")
    assert resource is not None
    assert all(resource[f"f{i}"] == i for i in range(20))


@pytest.mark.asyncio
async def test_returned_documents_are_copies(data: DomainData) -> None:
    await data.save_resource({"id": "r", "status": "new", "nested": {"a": 1}})
    first = await data.get_resource("r")
    assert first is not None
    first["nested"]["a"] = 2
    first["status"] = "changed"
    assert await data.get_resource("r") == {
        "id": "r",
        "status": "new",
        "nested": {"a": 1},
        "impressions": 0,
    }


# -- votes -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_one_vote_per_user_and_the_resource_exists_after(data: DomainData) -> None:
    assert await data.votes("r") == {}
    await data.add_vote("r", "ann", 5)
    await data.add_vote("r", "bob", 2)
    await data.add_vote("r", "ann", 3)
    assert await data.votes("r") == {"ann": 3, "bob": 2}
    resource = await data.get_resource("r")
    assert resource is not None
    assert resource["status"] == "new"
    assert await data.resource_ids() == ["r"]


@pytest.mark.asyncio
async def test_a_vote_keeps_an_existing_document(data: DomainData) -> None:
    await data.save_resource({"id": "r", "status": "processed"})
    await data.add_vote("r", "ann", 4)
    resource = await data.get_resource("r")
    assert resource is not None
    assert resource["status"] == "processed"


@pytest.mark.asyncio
@pytest.mark.parametrize("score", [0, 6, -1, True])
async def test_out_of_range_scores_are_refused(data: DomainData, score: int) -> None:
    with pytest.raises(ValueError, match="score"):
        await data.add_vote("r", "ann", score)
    assert await data.votes("r") == {}


# -- impressions -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_impressions_accumulate_as_pending(data: DomainData) -> None:
    assert await data.pending_impressions() == {}
    await data.record_impressions("a")
    await data.record_impressions("a", 4)
    await data.record_impressions("b", 2)
    assert await data.pending_impressions() == {"a": 5, "b": 2}
    with pytest.raises(ValueError, match="count"):
        await data.record_impressions("a", 0)


@pytest.mark.asyncio
async def test_claim_moves_pending_into_the_batch(data: DomainData) -> None:
    await data.record_impressions("a", 3)
    assert await data.claim_impressions("batch-1") == {"a": 3}
    assert await data.pending_impressions() == {}
    assert await data.open_impression_batches() == ["batch-1"]


@pytest.mark.asyncio
async def test_claim_with_nothing_pending_is_empty(data: DomainData) -> None:
    assert await data.claim_impressions("batch-1") == {}
    assert await data.open_impression_batches() == []


@pytest.mark.asyncio
async def test_reclaim_returns_the_same_batch_not_newer_counts(data: DomainData) -> None:
    await data.record_impressions("a", 3)
    await data.claim_impressions("batch-1")
    await data.record_impressions("a", 10)
    await data.record_impressions("b", 1)
    assert await data.claim_impressions("batch-1") == {"a": 3}
    assert await data.pending_impressions() == {"a": 10, "b": 1}
    assert await data.claim_impressions("batch-2") == {"a": 10, "b": 1}


@pytest.mark.asyncio
async def test_apply_adds_each_count_once_and_deletes_the_batch(data: DomainData) -> None:
    await data.save_resource({"id": "a", "status": "processed"})
    await data.record_impressions("a", 3)
    await data.record_impressions("b", 2)
    await data.claim_impressions("batch-1")
    assert await data.apply_impressions("batch-1") == {"a": 3, "b": 2}
    assert await data.apply_impressions("batch-1") == {}
    a, b = await data.get_resource("a"), await data.get_resource("b")
    assert a is not None
    assert b is not None
    assert (a["status"], a["impressions"]) == ("processed", 3)
    assert (b["status"], b["impressions"]) == ("new", 2)  # created by the apply
    assert await data.open_impression_batches() == []


@pytest.mark.asyncio
async def test_totals_grow_across_batches(data: DomainData) -> None:
    for batch, count in (("b1", 2), ("b2", 5)):
        await data.record_impressions("a", count)
        await data.claim_impressions(batch)
        await data.apply_impressions(batch)
    resource = await data.get_resource("a")
    assert resource is not None
    assert resource["impressions"] == 7


@pytest.mark.asyncio
async def test_killed_between_claim_and_apply_rerun_counts_once(data: DomainData) -> None:
    await data.record_impressions("a", 3)
    await data.claim_impressions("run-1")  # ... and the process dies here
    await data.record_impressions("a", 100)  # counted meanwhile, belongs to the next batch
    assert await data.claim_impressions("run-1") == {"a": 3}  # the re-run
    assert await data.apply_impressions("run-1") == {"a": 3}
    resource = await data.get_resource("a")
    assert resource is not None
    assert resource["impressions"] == 3
    assert await data.pending_impressions() == {"a": 100}


@pytest.mark.asyncio
async def test_a_finished_batch_claims_nothing_again(data: DomainData) -> None:
    await data.record_impressions("a", 3)
    await data.claim_impressions("run-1")
    await data.apply_impressions("run-1")  # ... and the process dies before recording SUCCESS
    await data.record_impressions("a", 5)
    assert await data.claim_impressions("run-1") == {}
    assert await data.apply_impressions("run-1") == {}
    assert await data.pending_impressions() == {"a": 5}
    resource = await data.get_resource("a")
    assert resource is not None
    assert resource["impressions"] == 3


@pytest.mark.asyncio
async def test_concurrent_appliers_of_one_batch_count_once(data: DomainData) -> None:
    for index in range(50):
        await data.record_impressions(f"r{index}", index + 1)
    await data.claim_impressions("shared")
    results = await asyncio.gather(*(data.apply_impressions("shared") for _ in range(4)))
    merged: dict[str, int] = {}
    for result in results:
        assert not set(merged) & set(result)
        merged.update(result)
    assert merged == {f"r{index}": index + 1 for index in range(50)}
    for index in (0, 49):
        resource = await data.get_resource(f"r{index}")
        assert resource is not None
        assert resource["impressions"] == index + 1


@pytest.mark.asyncio
async def test_update_never_loses_applied_impressions(data: DomainData) -> None:
    stale = {"id": "a", "status": "processing"}
    await data.save_resource(stale)
    await data.record_impressions("a", 4)
    await data.claim_impressions("b1")
    await data.apply_impressions("b1")
    await data.save_resource({**stale, "impressions": 0, "status": "processed"})
    resource = await data.get_resource("a")
    assert resource is not None
    assert (resource["status"], resource["impressions"]) == ("processed", 4)


@pytest.mark.asyncio
async def test_redis_apply_killed_half_way_resumes_once(redis_url: str) -> None:
    data = RedisDomainData(redis_url, prefix="test:")
    try:
        await data.record_impressions("a", 3)
        await data.record_impressions("b", 4)
        await data.claim_impressions("run-1")
        # What a killed apply_impressions leaves behind: resource "a" applied, "b" not yet.
        batch, applied, done = data._batch_keys("run-1")
        keys = [batch, applied, data._totals, data._resources, done, data._resource("a")]
        client = data._redis.client()
        assert await client.eval(_APPLY, len(keys), *keys, "a", '{"id":"a"}') == ["a", "3"]
        assert await data.claim_impressions("run-1") == {"a": 3, "b": 4}  # the re-run
        assert await data.apply_impressions("run-1") == {"b": 4}
        for resource_id, total in (("a", 3), ("b", 4)):
            resource = await data.get_resource(resource_id)
            assert resource is not None
            assert resource["impressions"] == total
    finally:
        await data.close()


@pytest.mark.asyncio
async def test_redis_keys_live_under_the_domain_prefix(
    redis_url: str, redis_server: RedisServer
) -> None:
    data = RedisDomainData(redis_url, prefix="test:")
    try:
        await data.save_resource({"id": "r", "status": "new"})
        await data.add_vote("r", "ann", 5)
        await data.record_impressions("r", 2)
        await data.claim_impressions("b1")
        await data.touch_session("s1", ttl=60, data={})
        await data.add_notification("n1", {"id": "n1", "recipient": "ann", "message": "hi"})
        keys = set(redis_server.client().keys("*"))
    finally:
        await data.close()
    assert keys == {
        "test:domain:resource:r",
        "test:domain:resources",
        "test:domain:votes:r",
        "test:domain:impressions:batch:b1",
        "test:domain:impressions:open",
        "test:domain:session:s1",
        "test:domain:sessions",
        "test:domain:notifications:ann",
        "test:domain:notification:n1",
    }


# -- sessions --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_touch_creates_and_extends_a_session(data: DomainData) -> None:
    before = time.time()
    await data.touch_session("s1", ttl=30, data={"user": "ann"})
    await data.touch_session("s2", ttl=5, data={})
    sessions = await data.sessions()
    assert set(sessions) == {"s1", "s2"}
    assert sessions["s1"]["data"] == {"user": "ann"}
    assert before + 30 <= sessions["s1"]["expires_at"] <= time.time() + 30
    await data.touch_session("s2", ttl=100, data={"n": 2})
    extended = (await data.sessions())["s2"]
    assert extended["data"] == {"n": 2}
    assert extended["expires_at"] >= before + 100


@pytest.mark.asyncio
async def test_delete_sessions_counts_what_it_removed(data: DomainData) -> None:
    await data.touch_session("s1", ttl=30, data={})
    await data.touch_session("s2", ttl=30, data={})
    assert await data.delete_sessions(["s1", "missing", "s1"]) == 1
    assert await data.delete_sessions([]) == 0
    assert set(await data.sessions()) == {"s2"}


@pytest.mark.asyncio
@pytest.mark.parametrize("ttl", [0, -1.0, float("nan")])
async def test_a_session_needs_a_positive_ttl(data: DomainData, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await data.touch_session("s", ttl=ttl, data={})


@pytest.mark.asyncio
async def test_redis_lists_a_session_whose_key_expired(
    redis_url: str, redis_server: RedisServer
) -> None:
    data = RedisDomainData(redis_url, prefix="test:")
    try:
        await data.touch_session("s1", ttl=30, data={"a": 1})
        redis_server.client().delete("test:domain:session:s1")  # Redis expired it
        sessions = await data.sessions()
        assert sessions["s1"]["data"] == {}
        assert await data.delete_sessions(["s1"]) == 1
        assert await data.sessions() == {}
    finally:
        await data.close()


# -- notifications ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_notifications_are_added_once_per_id_newest_first(data: DomainData) -> None:
    def entry(n: int) -> dict[str, object]:
        return {"id": f"n{n}", "recipient": "ann", "message": f"m{n}"}

    assert await data.add_notification("n1", entry(1)) is True
    assert await data.add_notification("n2", entry(2)) is True
    assert await data.add_notification("n1", entry(1)) is False
    assert [n["id"] for n in await data.notifications("ann")] == ["n2", "n1"]
    assert [n["id"] for n in await data.notifications("ann", limit=1)] == ["n2"]
    assert await data.notifications("ann", limit=0) == []
    assert await data.notifications("bob") == []


# -- failures --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_dead_redis_raises_store_unavailable() -> None:
    data = RedisDomainData(f"redis://127.0.0.1:{free_port()}/0", prefix="test:")
    try:
        with pytest.raises(StoreUnavailable):
            await data.get_resource("r")
        with pytest.raises(StoreUnavailable):
            await data.claim_impressions("b1")
        with pytest.raises(StoreUnavailable):
            await data.update_resource("r", {"a": 1})
    finally:
        await data.close()
