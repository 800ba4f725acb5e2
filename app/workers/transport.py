"""kombu's Redis transport, recording which worker holds each unacknowledged message.

kombu keeps a late-ack message it delivered in the `unacked` hash (delivery tag -> [message,
exchange, routing key]) and `unacked_index` (tag -> time) until the ack; nothing there says
which consumer holds it, so only the visibility timeout (an hour) brings back the messages of
a worker that died. This QoS adds `{prefix}unacked:holders` (tag -> worker hostname), written
in the same MULTI/EXEC as kombu's own two writes (so a SIGKILL can never leave a message held
without its holder), and removed with them. app/core/tasks/recovery.py reads it to put exactly
a dead worker's messages back on their queues (DESIGN.md §3 "Worker presence").

A worker that was declared dead by mistake (it only lost Redis) may come back and ack or
restore a message recovery already handed to another worker under the same delivery tag: its
ack and its restore-on-close then leave the message alone unless this worker still holds it
(RELEASE below, and restore_mine), so a late ack can never drop another worker's message.
kombu's visibility-timeout sweep (restore_visible, any process, any holder) is unchanged: it
stays the last resort.

Only the worker's consuming connection records holders: the options are set by the heartbeat
bootstep (app.workers.heartbeat), and a channel without `tasklane_holder` is the guarded one of
app.workers.broker. Both build on that guard, so a busy worker recording holders still
survives a Redis restart.
"""

from __future__ import annotations

from functools import cached_property
from time import time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base as virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from app.workers import broker

#: Transport options this module adds (app.workers.heartbeat sets them in a worker).
HOLDER_OPTION = "tasklane_holder"
HOLDERS_KEY_OPTION = "tasklane_holders_key"
#: The value of Celery's `broker_transport` that selects this transport.
TRANSPORT_PATH = "app.workers.transport:Transport"

# KEYS: unacked_index, unacked, holders; ARGV: tag, this worker. Drops the message's entries
# unless another worker holds it now (recovery gave it to someone else meanwhile).
RELEASE = """
local holder = redis.call('HGET', KEYS[3], ARGV[1])
if holder and holder ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""


class QoS(kombu_redis.QoS):
    """kombu's Redis ack emulation plus the holder of each unacknowledged message."""

    @cached_property
    def holder(self) -> str | None:
        return getattr(self.channel, HOLDER_OPTION, None)

    @cached_property
    def holders_key(self) -> str:
        return getattr(self.channel, HOLDERS_KEY_OPTION)

    def append(self, message: Any, delivery_tag: str) -> None:
        if self.holder is None:
            return super().append(message, delivery_tag)
        delivery = message.delivery_info
        entry = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        # kombu's two writes and the holder in one MULTI/EXEC: all or nothing.
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time()}).hset(
                self.unacked_key, delivery_tag, entry
            ).hset(self.holders_key, delivery_tag, self.holder).execute()
        virtual.QoS.append(self, message, delivery_tag)
        return None

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        # Every removal kombu makes (ack, reject, the visibility sweep) drops the holder too.
        pipe = super()._remove_from_indices(delivery_tag, pipe)
        if self.holder is None:
            return pipe
        return pipe.hdel(self.holders_key, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        if self.holder is None:
            return super().ack(delivery_tag)
        self._release(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)
        return None

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if self.holder is None:
            return super().reject(delivery_tag, requeue=requeue)
        if requeue:
            self.restore_mine(delivery_tag, leftmost=True)
        else:
            self._release(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)
        return None

    def restore_unacked(self, client: Any = None) -> None:
        if self.holder is None:
            return super().restore_unacked(client)
        with self.channel.conn_or_acquire(client) as conn:
            for tag in self._delivered:
                self.restore_mine(tag, client=conn)
        self._delivered.clear()
        return None

    def restore_mine(self, tag: str, client: Any = None, leftmost: bool = False) -> None:
        """kombu's restore_by_tag for a message this worker received: nothing when recovery
        has since handed it to another worker (it is theirs now)."""

        def restore_transaction(pipe: Any) -> None:
            holder = pipe.hget(self.holders_key, tag)
            if holder is not None and bytes_to_str(holder) != self.holder:
                return
            raw = pipe.hget(self.unacked_key, tag)
            pipe.multi()
            self._remove_from_indices(tag, pipe)
            if raw:
                message, exchange, routing_key = loads(bytes_to_str(raw))
                self.channel._do_restore_message(message, exchange, routing_key, pipe, leftmost)

        with self.channel.conn_or_acquire(client) as conn:
            conn.transaction(restore_transaction, self.unacked_key, self.holders_key)

    def _release(self, tag: str) -> None:
        with self.channel.conn_or_acquire() as client:
            client.eval(
                RELEASE,
                3,
                self.unacked_index_key,
                self.unacked_key,
                self.holders_key,
                tag,
                self.holder,
            )


class Channel(broker.Channel):
    """The restart-guarded channel (app.workers.broker) with the holder-recording QoS."""

    QoS = QoS
    tasklane_holder: str | None = None
    tasklane_holders_key = "tasklane:unacked:holders"
    from_transport_options = (
        *kombu_redis.Channel.from_transport_options,
        HOLDER_OPTION,
        HOLDERS_KEY_OPTION,
    )


class Transport(broker.Transport):
    Channel = Channel
