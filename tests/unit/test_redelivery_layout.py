"""Where recovery puts a restored message, checked against kombu's own Redis transport code,
and when recovery applies at all (recovery.recovery_problem)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from kombu.transport import redis as kombu_redis

from app.core.tasks.broker_layout import KOMBU_PRIORITY_STEPS, KOMBU_SEP, BrokerLayout
from app.core.tasks.recovery import recovery_problem


@pytest.mark.parametrize(
    "options",
    [{}, {"sep": ":", "priority_steps": [0, 3, 6, 9]}, {"priority_steps": [0, 5]}],
)
def test_the_list_for_each_priority_is_kombus(options: dict[str, object]) -> None:
    layout = BrokerLayout.from_transport_options(options)
    channel = SimpleNamespace(
        sep=options.get("sep", KOMBU_SEP),
        priority_steps=list(options.get("priority_steps", KOMBU_PRIORITY_STEPS)),  # type: ignore[call-overload]
    )
    channel.priority = lambda n: kombu_redis.Channel.priority(channel, n)
    for priority in range(10):
        expected = kombu_redis.Channel._q_for_pri(channel, "heavy", priority)
        assert layout.queue_list("heavy", priority) == expected


@pytest.mark.parametrize(
    ("broker", "store", "options", "problem"),
    [
        ("redis://r:6379/0", "redis://r:6379/0", {}, None),
        ("redis://r:6379/0", "redis://r:6379/1", {}, "not the result store's Redis"),
        ("redis://r:6379/0", None, {}, "not the result store's Redis"),
        ("rediss://r:6379/0", "rediss://r:6379/0", {}, "not a redis:// URL"),
        ("amqp://r//", "redis://r:6379/0", {}, "not a redis:// URL"),
        (None, "redis://r:6379/0", {}, "not a redis:// URL"),
        ("redis://r:6379/0", "redis://r:6379/0", {"global_keyprefix": "x"}, "global_keyprefix"),
    ],
)
def test_recovery_applies_only_where_one_script_reaches_both(
    broker: str | None, store: str | None, options: dict[str, object], problem: str | None
) -> None:
    found = recovery_problem(broker, store, options)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found
