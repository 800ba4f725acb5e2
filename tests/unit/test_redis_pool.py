"""A full Redis connection pool waits for a free connection, bounded by PoolLimits.wait; it never
reports a healthy Redis as unreachable on the spot (redis-py's default pool raised
MaxConnectionsError, which the api turned into a 503)."""

from __future__ import annotations

import asyncio

import pytest

from app.config import Settings
from app.core.redis_client import LoopLocalRedis, PoolLimits
from app.core.tasks.errors import StoreUnavailable
from app.core.tasks.store import create_store
from app.core.tasks.store.redis import translate_unavailable
from app.tasks.data import create_domain_data


@pytest.mark.asyncio
async def test_a_command_waits_for_a_connection_of_a_full_pool(redis_url: str) -> None:
    clients = LoopLocalRedis(redis_url, limits=PoolLimits(max_connections=2, wait=30))
    client = clients.client()
    try:
        await client.set("pool:value", "here")
        # Both connections are held by blocking pops until something is pushed.
        holders = [asyncio.ensure_future(client.blpop([f"pool:hold:{i}"], 4)) for i in (0, 1)]
        await asyncio.sleep(0.2)
        reader = asyncio.ensure_future(client.get("pool:value"))
        await asyncio.sleep(0.2)
        assert not reader.done()  # waiting for a connection, not failed
        side = LoopLocalRedis(redis_url)  # a client of its own: this one's pool is full
        await side.client().rpush("pool:hold:0", "go")
        assert await asyncio.wait_for(reader, 10) == "here"
        await side.client().rpush("pool:hold:1", "go")
        await side.close()
        await asyncio.gather(*holders)
    finally:
        await clients.close()


@pytest.mark.asyncio
async def test_a_pool_full_for_longer_than_the_wait_is_unavailable_naming_the_settings(
    redis_url: str,
) -> None:
    clients = LoopLocalRedis(redis_url, limits=PoolLimits(max_connections=1, wait=0.3))
    client = clients.client()
    try:
        holder = asyncio.ensure_future(client.blpop(["pool:never"], 3))
        await asyncio.sleep(0.2)
        with pytest.raises(StoreUnavailable) as caught:
            async with translate_unavailable("reading"):
                await client.get("pool:value")
        message = str(caught.value)
        assert "all 1 connections stayed busy for 0.3 s" in message
        assert "TASKLANE_REDIS_MAX_CONNECTIONS" in message
        assert "TASKLANE_REDIS_POOL_TIMEOUT" in message
        holder.cancel()
    finally:
        await clients.close()


@pytest.mark.asyncio
async def test_the_settings_size_the_store_and_domain_data_pools(redis_url: str) -> None:
    settings = Settings(
        store="redis", redis_url=redis_url, redis_max_connections=7, redis_pool_timeout=1.5
    )
    store = create_store(settings)
    data = create_domain_data(settings)
    try:
        for owner in (store, data):
            pool = owner._redis.client().connection_pool  # type: ignore[attr-defined]
            assert (pool.max_connections, pool.wait) == (7, 1.5)
    finally:
        await store.close()
        await data.close()


@pytest.mark.asyncio
async def test_far_more_commands_than_connections_all_succeed_within_the_limit(
    redis_url: str,
) -> None:
    clients = LoopLocalRedis(redis_url, limits=PoolLimits(max_connections=3, wait=60))
    client = clients.client()
    try:
        await asyncio.gather(*(client.incr("pool:count") for _ in range(1000)))

        assert await client.get("pool:count") == "1000"
        pool = client.connection_pool
        assert len(pool._available_connections) + len(pool._in_use_connections) <= 3
    finally:
        await clients.close()


@pytest.mark.asyncio
async def test_a_waiter_that_gives_up_does_not_hold_up_the_ones_behind_it(redis_url: str) -> None:
    clients = LoopLocalRedis(redis_url, limits=PoolLimits(max_connections=1, wait=30))
    client = clients.client()
    try:
        await client.set("pool:value", "here")
        holder = asyncio.ensure_future(client.blpop(["pool:hold"], 4))
        await asyncio.sleep(0.2)
        quitter = asyncio.ensure_future(client.get("pool:value"))
        patient = [asyncio.ensure_future(client.get("pool:value")) for _ in range(3)]
        await asyncio.sleep(0.2)
        quitter.cancel()  # a client that went away while queued
        side = LoopLocalRedis(redis_url)
        await side.client().rpush("pool:hold", "go")
        await side.close()

        assert await asyncio.wait_for(asyncio.gather(*patient), 10) == ["here"] * 3
        assert await holder == ("pool:hold", "go")
    finally:
        await clients.close()
