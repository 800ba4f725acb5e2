"""kombu's Redis transport with one guard, so a busy worker survives a Redis restart.

The race (kombu 5.7.0, celery 5.7.0): Redis goes away while a worker holds an unacknowledged
message (a task running, acks_late) and has a BRPOP in flight. Celery's consumer,
`on_connection_error_after_connected`, first calls `connection.collect()`: closing the
consuming channel there fails early (kombu's `Channel.close` reads the pending BRPOP reply
and gets ConnectionError), closing the transport's other channels stops at the first one
that raises (the control channel deletes its fanout queue on a dead Redis), and collect()
then detaches the transport from its kombu Connection (`transport.client = None`). Celery
then calls `ignore_errors(connection, connection.close)`, which closes the consuming channel
again; this time the close gets as far as restoring the unacknowledged message, which asks
for a Redis client, whose pool is built by `Channel._connparams` from
`self.connection.client.hostname`, and client is None: AttributeError, which ignore_errors
does not catch, and the worker exits ("Unrecoverable error"). Idle workers have nothing to
restore and survive. Upstream: celery/kombu#582 (the same AttributeError from `_connparams`
when a channel is closed after its connection was released, there the gossip channel) and
celery/kombu#970 (the same restore path, `restore_unacked` -> `conn_or_acquire`, failing at
shutdown); kombu 5.7.0 still reads the detached client.

The guard: a channel remembers the connection parameters it last built its pools from, and
uses them when its transport has been detached, instead of failing. So the close does what
it does when the race goes the other way: it tries to push the message back to its queue.
While Redis is still down (the usual case) that push fails with ConnectionError, which Celery
ignores, and the message stays where kombu put it on delivery (its `unacked` hash): never
lost. The task still running in the pool acknowledges it through this channel when it
finishes (the channel can reach Redis again); if that acknowledgement fails too, the
visibility-timeout sweep redelivers it and app.workers.delivery finds the record finished (or
its attempt still running) and does not run it again. When the push succeeds (Redis already
back), the message is delivered again at once and the same check applies: never run twice.

tests/unit/test_broker_restore_guard.py pins both halves against the real kombu, Celery and
redis-server: the stock channel still fails this way (when it stops failing, kombu fixed it:
drop this module), and this one does not, keeping the message.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

#: The value of Celery's `broker_transport` that selects this transport.
TRANSPORT_PATH = "app.workers.broker:Transport"


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, able to reach Redis after its transport let go of the URL."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Before kombu's __init__, which already builds the asynchronous pool (its PING).
        self._known_connparams: dict[bool, dict[str, Any]] = {}
        super().__init__(*args, **kwargs)
        # The synchronous pool (acks, restores) may only be built after the detachment.
        self._connparams(asynchronous=False)

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        transport = self.connection
        if transport is not None and transport.client is not None:
            params = super()._connparams(asynchronous=asynchronous)
            self._known_connparams[asynchronous] = params
            return dict(params)
        known = self._known_connparams.get(asynchronous)
        if known is None:  # never connected: nothing to restore, fail as kombu does
            return super()._connparams(asynchronous=asynchronous)
        return dict(known)


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the guarded Channel; selected by app.workers.celery_config
    (`broker_transport`) for redis:// broker URLs."""

    Channel = Channel
