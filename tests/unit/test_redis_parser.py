"""The Redis clients parse replies with hiredis (the `redis[hiredis]` dependency).

Pure-Python reply parsing was the largest single cost of a worker's Redis round trips: with
hiredis, benchmark (c) (end-to-end no-op through a prefork worker) ran ~15-25 % more tasks/s.
redis-py falls back to its Python parser silently when hiredis is missing, so a dependency
change that dropped it would go unnoticed without this check.
"""

from __future__ import annotations

import pytest
import redis
from redis._parsers import _AsyncHiredisParser, _HiredisParser

from app.core.redis_client import LoopLocalRedis


def test_sync_connections_use_hiredis() -> None:
    client = redis.Redis.from_url("redis://127.0.0.1:1/0")
    connection = client.connection_pool.make_connection()
    assert isinstance(connection._parser, _HiredisParser)


@pytest.mark.asyncio
async def test_async_connections_use_hiredis() -> None:
    clients = LoopLocalRedis("redis://127.0.0.1:1/0")
    try:
        connection = clients.client().connection_pool.make_connection()
        assert isinstance(connection._parser, _AsyncHiredisParser)
    finally:
        await clients.close()
