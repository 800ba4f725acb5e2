"""Rate limits (app/core/tasks/rate_limits.py): the syntax, the start-up checks, and one limiter
contract run on both limiters (in-process and the Lua script on a real redis-server), plus the
script against gcra_step on the same sequence of calls."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import redis
from pydantic import ValidationError

from app.config import Settings
from app.core.tasks.rate_limits import (
    STALE_AFTER,
    InProcessLimiter,
    Limiter,
    RateLimit,
    RedisLimiter,
    _Bucket,
    gcra_step,
    limiter_for,
    parse_overrides,
    parse_rate_limit,
)
from app.core.tasks.registry import TaskRegistry, task
from app.core.tasks.store.memory import MemoryStore
from app.core.tasks.store.redis import RedisStore
from app.wiring import build_task_manager

TEN_PER_SECOND = RateLimit(count=10, period=1.0)


# -- syntax --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "period"),
    [
        ("10/s", 10, 1.0),
        ("100/m", 100, 60.0),
        ("5/h", 5, 3600.0),
        ("2.5/s", 2.5, 1.0),
        ("7", 7, 1.0),  # Celery: a bare number is per second
        (" 3 / m ", 3, 60.0),
        (4, 4, 1.0),
    ],
)
def test_celery_syntax_is_parsed(text: str | int, count: float, period: float) -> None:
    limit = parse_rate_limit(text)

    assert limit == RateLimit(count=count, period=period)


@pytest.mark.parametrize("text", ["0", "0/s", "none", "off", "NONE"])
def test_zero_or_none_means_no_limit(text: str) -> None:
    assert parse_rate_limit(text) is None


@pytest.mark.parametrize("text", ["ten/s", "10/d", "10/s/s", "-1/s", "", "1e3/s"])
def test_bad_syntax_is_refused_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"N/s, N/m, N/h"):
        parse_rate_limit(text)


def test_burst_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="rate_burst"):
        parse_rate_limit("10/s", burst=0)


def test_limit_prints_in_celery_syntax() -> None:
    assert str(parse_rate_limit("100/m")) == "100/m"
    assert str(parse_rate_limit("2.5/s")) == "2.5/s"


def test_task_decorator_refuses_a_bad_limit_at_registration() -> None:
    target = TaskRegistry()
    with pytest.raises(ValueError, match="not N/s"):

        @task("bad_limit", rate_limit="fast", target=target)
        def bad_limit() -> None: ...

    assert "bad_limit" not in target


def test_task_decorator_records_limit_and_burst() -> None:
    target = TaskRegistry()

    @task("limited", rate_limit="10/s", rate_burst=3, target=target)
    def limited() -> None: ...

    assert target.get("limited").rate_limit == RateLimit(count=10, period=1.0, burst=3)


# -- TASKLANE_RATE_LIMITS ------------------------------------------------------------------


def _registry() -> TaskRegistry:
    target = TaskRegistry()

    @task("declared", rate_limit="10/s", rate_burst=2, target=target)
    def declared() -> None: ...

    @task("plain", target=target)
    def plain() -> None: ...

    return target


def test_overrides_are_split_by_the_settings() -> None:
    settings = Settings(rate_limits="declared=5/m, plain=1/s")

    assert settings.rate_limits == {"declared": "5/m", "plain": "1/s"}


def test_an_override_entry_without_a_limit_names_the_variable() -> None:
    with pytest.raises(ValidationError, match=r"TASKLANE_RATE_LIMITS entry 'plain' is not"):
        Settings(rate_limits="plain")


def test_overrides_replace_the_declared_limit_and_keep_its_burst() -> None:
    limits = parse_overrides({"declared": "5/m", "plain": "1/s"}, _registry())

    assert limits == {
        "declared": RateLimit(count=5, period=60.0, burst=2),
        "plain": RateLimit(count=1, period=1.0),
    }


def test_an_override_of_none_switches_a_declared_limit_off() -> None:
    assert parse_overrides({"declared": "none"}, _registry()) == {"declared": None}


@pytest.mark.parametrize(
    ("raw", "entry"),
    [({"declared": "fast"}, "declared=fast"), ({"nosuch": "1/s"}, "nosuch=1/s")],
)
def test_a_bad_override_names_the_variable_and_the_entry(raw: dict[str, str], entry: str) -> None:
    with pytest.raises(ValueError, match=rf"TASKLANE_RATE_LIMITS entry '{entry}'"):
        parse_overrides(raw, _registry())


def test_a_bad_override_stops_the_start_up() -> None:
    settings = Settings(store="memory", executor="background", rate_limits="nosuch_task=1/s")

    with pytest.raises(ValueError, match=r"TASKLANE_RATE_LIMITS entry 'nosuch_task=1/s'"):
        build_task_manager(settings)


def test_stores_pick_their_limiter(redis_url: str) -> None:
    assert isinstance(limiter_for(MemoryStore()), InProcessLimiter)
    assert isinstance(limiter_for(RedisStore(redis_url)), RedisLimiter)


# -- one contract, two limiters ------------------------------------------------------------


@pytest_asyncio.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[Limiter]:
    if request.param == "memory":
        yield InProcessLimiter()
        return
    store = RedisStore(request.getfixturevalue("redis_url"), prefix="test:")
    yield limiter_for(store)
    await store.close()


@pytest.mark.asyncio
async def test_first_start_is_allowed_and_the_next_gets_a_ticket(limiter: Limiter) -> None:
    first = await limiter.admit("t", TEN_PER_SECOND, "a", returning=False)
    second = await limiter.admit("t", TEN_PER_SECOND, "b", returning=False)

    assert first.allowed
    assert not second.allowed
    assert 0 < second.wait <= TEN_PER_SECOND.interval


@pytest.mark.asyncio
async def test_refused_callers_get_tickets_one_interval_apart(limiter: Limiter) -> None:
    await limiter.admit("t", TEN_PER_SECOND, "first", returning=False)

    waits = [
        (await limiter.admit("t", TEN_PER_SECOND, f"w{n}", returning=False)).wait for n in range(5)
    ]

    gaps = [later - earlier for earlier, later in itertools.pairwise(waits)]
    # Each call is a little later than the one before, so a gap is a hair under one interval.
    assert all(0.05 < gap <= 0.1 + 1e-5 for gap in gaps), gaps


@pytest.mark.asyncio
async def test_burst_allows_that_many_starts_back_to_back(limiter: Limiter) -> None:
    limit = RateLimit(count=10, period=1.0, burst=3)

    admissions = [await limiter.admit("t", limit, f"b{n}", returning=False) for n in range(4)]

    assert [a.allowed for a in admissions] == [True, True, True, False]


@pytest.mark.asyncio
async def test_waiting_counts_ticket_holders_until_they_start_or_are_forgotten(
    limiter: Limiter,
) -> None:
    await limiter.admit("t", TEN_PER_SECOND, "a", returning=False)
    await limiter.admit("t", TEN_PER_SECOND, "b", returning=False)
    await limiter.admit("t", TEN_PER_SECOND, "c", returning=False)
    assert await limiter.waiting(["t", "other"]) == {"t": 2, "other": 0}

    await limiter.forget("t", "b")

    assert await limiter.waiting(["t"]) == {"t": 1}


@pytest.mark.asyncio
async def test_a_newcomer_queues_behind_ticket_holders(limiter: Limiter) -> None:
    slow = RateLimit(count=1, period=1.0)
    await limiter.admit("t", slow, "a", returning=False)
    held = await limiter.admit("t", slow, "b", returning=False)

    newcomer = await limiter.admit("t", slow, "c", returning=False)

    assert not newcomer.allowed
    assert newcomer.wait > held.wait


@pytest.mark.asyncio
async def test_limits_of_different_tasks_do_not_share_slots(limiter: Limiter) -> None:
    assert (await limiter.admit("one", TEN_PER_SECOND, "a", returning=False)).allowed
    assert (await limiter.admit("two", TEN_PER_SECOND, "a", returning=False)).allowed


@pytest.mark.asyncio
async def test_a_refused_ticket_holder_gets_the_next_slot_not_the_end_of_the_line(
    limiter: Limiter,
) -> None:
    await limiter.admit("t", TEN_PER_SECOND, "first", returning=False)
    line = [await limiter.admit("t", TEN_PER_SECOND, f"w{n}", returning=False) for n in range(5)]

    again = await limiter.admit("t", TEN_PER_SECOND, "w0", returning=True)

    assert not again.allowed  # back before its ticket: refused, but...
    assert again.wait <= line[0].wait  # ...its next try is its own slot, not after w4's


@pytest.mark.asyncio
async def test_a_ticket_long_overdue_stops_counting_as_waiting(redis_url: str) -> None:
    store = RedisStore(redis_url, prefix="test:")
    limiter = RedisLimiter(store.redis, prefix="test:")
    now = float(store_time_ms(redis_url))
    past = now - (STALE_AFTER + 10) * 1000  # a process took a ticket, then died
    await limiter.admit("t", TEN_PER_SECOND, "a", returning=False, now_ms=past)
    await limiter.admit("t", TEN_PER_SECOND, "dead", returning=False, now_ms=past)

    assert await limiter.waiting(["t"]) == {"t": 0}
    await store.close()


def store_time_ms(redis_url: str) -> float:
    """The Redis server's clock, in ms (what the script reads)."""
    client = redis.Redis.from_url(redis_url)
    seconds, micros = client.time()
    client.close()
    return seconds * 1000 + micros / 1000


# -- the script is gcra_step ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_lua_script_answers_as_gcra_step_on_the_same_calls(redis_url: str) -> None:
    store = RedisStore(redis_url, prefix="test:")
    script = RedisLimiter(store.redis, prefix="test:")
    rng = random.Random(13)
    limits = [RateLimit(count=10, period=1.0), RateLimit(count=5, period=1.0, burst=3)]
    for limit in limits:
        bucket, now = _Bucket(), 1_700_000_000_000.0
        task_name = f"seq-{limit.burst}"
        for n in range(200):
            now += rng.choice([0.0, 7.5, 40.0, 99.0, 100.0, 250.0])
            returning = rng.random() < 0.4
            expected = gcra_step(bucket, now, limit, f"id{n}", returning=returning)
            got = await script.admit(task_name, limit, f"id{n}", returning=returning, now_ms=now)
            assert got.allowed == expected.allowed, n
            assert got.wait == pytest.approx(expected.wait, abs=1e-5), n
    await store.close()
