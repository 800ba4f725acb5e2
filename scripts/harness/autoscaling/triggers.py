"""Trigger values read the way KEDA's `redis` scaler reads them: from the Redis the rendered
trigger names, with the Lua script the scaler EVALs (pkg/scalers/redis_scaler.go, KEDA >= 2.0,
Apache-2.0), so a ZSET, SET or HASH counts by its cardinality and a missing key counts 0.

The address is resolved as KEDA resolves it: `address` in the metadata, else `addressFromEnv`
looked up in the environment of the scale target's container named `envSourceContainerName`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import redis

#: KEDA's script: the key's TYPE picks the counting command; `none` (no key) reads as LLEN = 0.
KEDA_REDIS_LENGTH_LUA = """
local listName = KEYS[1]
local listType = redis.call('type', listName).ok
local cmd = {
    zset = 'zcard',
    set = 'scard',
    list = 'llen',
    hash = 'hlen',
    none = 'llen'
}
return redis.call(cmd[listType], listName)
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisTrigger:
    """One `type: redis` trigger of a ScaledObject, its address resolved."""

    name: str
    list_name: str
    host: str
    port: int
    database: int

    @classmethod
    def from_manifest(cls, trigger: Mapping[str, Any], env: Mapping[str, str]) -> RedisTrigger:
        """Raises ValueError for a trigger this reader cannot honour (another scaler type,
        TLS, a password): reading a different Redis than KEDA would must not pass silently."""
        if trigger.get("type") != "redis":
            raise ValueError(
                f"trigger {trigger.get('name')}: only type redis is read, not {trigger.get('type')}"
            )
        meta = trigger["metadata"]
        if trigger.get("authenticationRef") or meta.get("password") or meta.get("passwordFromEnv"):
            raise ValueError(
                f"trigger {trigger['name']} needs a password: render the chart with "
                "redis.external.url (no auth) for the local harness"
            )
        if str(meta.get("enableTLS", "false")).lower() == "true":
            raise ValueError(f"trigger {trigger['name']}: TLS is not supported locally")
        if meta.get("address"):
            address = meta["address"]
        elif meta.get("addressFromEnv"):
            variable = meta["addressFromEnv"]
            if variable not in env:
                raise ValueError(f"trigger {trigger['name']}: the container has no {variable}")
            address = env[variable]
        else:
            address = f"{meta['host']}:{meta.get('port', 6379)}"
        host, _, port = address.rpartition(":")
        return cls(
            name=trigger["name"],
            list_name=meta["listName"],
            host=host,
            port=int(port),
            database=int(meta.get("databaseIndex", 0)),
        )


class TriggerReader:
    """Reads every trigger once per call; one client per distinct Redis address and database."""

    def __init__(self, triggers: Sequence[RedisTrigger]) -> None:
        self.triggers = tuple(triggers)
        self._clients: dict[tuple[str, int, int], redis.Redis] = {}
        for trigger in self.triggers:
            key = (trigger.host, trigger.port, trigger.database)
            if key not in self._clients:
                self._clients[key] = redis.Redis(
                    host=trigger.host, port=trigger.port, db=trigger.database, socket_timeout=5
                )

    def read(self) -> dict[str, float]:
        """{trigger name: its metric value now}."""
        values = {}
        for trigger in self.triggers:
            client = self._clients[(trigger.host, trigger.port, trigger.database)]
            values[trigger.name] = float(client.eval(KEDA_REDIS_LENGTH_LUA, 1, trigger.list_name))
        return values

    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
