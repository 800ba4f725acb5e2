"""Settings read from the environment (prefix TASKLANE_), plus the guide's unprefixed names.

The migration guide promised REDIS_URL, CELERY_BROKER_URL and CELERY_RESULT_BACKEND; they are read
as written there (a TASKLANE_-prefixed spelling wins when both are set). With nothing set, the app
runs the embedded default: in-process executor, in-memory store, no service needed.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ExecutorKind = Literal["background", "celery", "hybrid"]

#: The migration guide's HEAVY_TASKS: routed to Celery whenever a worker can take them.
GUIDE_HEAVY_TASKS = frozenset(
    {"process_speak_audio", "calculate_all_ratings", "sync_impressions_from_redis"}
)
StoreKind = Literal["memory", "redis"]
#: URL schemes that name a Redis server (redis-py's and kombu's Redis transport's).
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})

#: Where a pod's service account namespace is mounted (the in-cluster default namespace).
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _alias(name: str) -> AliasChoices:
    return AliasChoices(f"TASKLANE_{name}", name)


class Settings(BaseSettings):
    """Everything configurable; `resolved_*` properties turn "auto" into a concrete choice."""

    model_config = SettingsConfigDict(
        env_prefix="TASKLANE_", case_sensitive=False, extra="ignore", populate_by_name=True
    )

    executor: Literal["auto", "background", "celery", "hybrid"] = "auto"
    store: Literal["auto", "memory", "redis"] = "auto"
    redis_url: str | None = Field(default=None, validation_alias=_alias("REDIS_URL"))
    celery_broker_url: str | None = Field(
        default=None, validation_alias=_alias("CELERY_BROKER_URL")
    )
    celery_result_backend: str | None = Field(
        default=None, validation_alias=_alias("CELERY_RESULT_BACKEND")
    )
    key_prefix: str = "tasklane:"
    #: Seconds a task record is kept after its last change.
    result_ttl: int = Field(default=86_400, ge=60)
    #: How many records the "recent" listing (and the memory store) keeps.
    recent_max: int = Field(default=10_000, ge=10)
    #: Redis connections per client (per process: records, domain data); a full pool waits.
    redis_max_connections: int = Field(default=100, ge=1, le=10_000)
    #: Seconds a Redis command waits for a free connection of a full pool before a 503.
    redis_pool_timeout: float = Field(default=5.0, gt=0, le=300)

    #: Tasks the in-process runner executes at once (async and sync together).
    concurrency: int = Field(default=8, ge=1, le=1024)
    #: Seconds shutdown waits for running tasks before marking them FAILURE Interrupted.
    shutdown_grace: float = Field(default=25.0, ge=0)
    #: Extra modules to import so their @task functions register (comma-separated).
    task_modules: Annotated[list[str], NoDecode] = Field(default_factory=list)

    #: Rate limits without a code change: "name=10/s,other=100/m" ("name=none" switches a
    #: declared one off); checked against the registry at start-up (app/core/tasks/rate_limits.py).
    rate_limits: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)

    #: "auto": the in-process scheduler runs only when no Celery beat owns the schedule.
    scheduler: Literal["auto", "on", "off"] = "auto"

    #: When set, every endpoint but the probes and /metrics requires
    #: "Authorization: Bearer <token>" (app/api/auth.py); unset or empty: all open (warned).
    api_token: SecretStr | None = None
    #: Serve `error.traceback` in task records over HTTP (it names server paths and code).
    expose_tracebacks: bool = False
    #: Largest request body accepted, in bytes (413 above it).
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    #: Largest total audio a WebSocket session may stream, in bytes.
    max_audio_bytes: int = Field(default=16 * 1_048_576, ge=1024)
    #: Largest task arguments (`[args, kwargs]` as compact JSON) a submit accepts, in bytes;
    #: larger ones are refused (413) before anything is stored. The audio WebSocket allows its
    #: own audio's size instead (bounded by max_audio_bytes).
    max_args_bytes: int = Field(default=1_048_576, ge=1024)
    #: Byte budget of the memory store's records (see app/core/tasks/store/memory.py).
    memory_store_max_bytes: int = Field(default=256 * 1_048_576, ge=1_048_576)

    # -- scaled mode (Celery) ------------------------------------------------------------------
    #: Tasks routed to Celery when a worker can serve them (the guide's HEAVY_TASKS), on top of
    #: every task registered with weight="heavy".
    heavy_tasks: Annotated[set[str], NoDecode] = Field(
        default_factory=lambda: set(GUIDE_HEAVY_TASKS), validation_alias=_alias("HEAVY_TASKS")
    )
    #: Pins: "process_speak_audio=celery,send_notification=background" wins over every rule.
    routes: Annotated[dict[str, Literal["background", "celery"]], NoDecode] = Field(
        default_factory=dict
    )
    #: KEDA scales workers from zero: an empty pool is not an outage, so heavy tasks queue.
    scale_from_zero: bool = False
    #: Celery queue names for light and heavy tasks.
    light_queue: str = Field(default="light", min_length=1)
    heavy_queue: str = Field(default="heavy", min_length=1)
    #: Seconds between worker heartbeats; a worker is live for 3 intervals after its last one.
    worker_heartbeat_interval: float = Field(default=5.0, gt=0)
    #: Seconds between the api's reads of worker heartbeats (off the request path).
    monitor_interval: float = Field(default=2.0, gt=0)
    #: Seconds a task sent to Celery may wait for a worker while none is live before an
    #: idempotent one is taken back and run in-process.
    dispatch_deadline: float = Field(default=60.0, gt=0)
    #: Upper bound in seconds on publishing one task; a dead broker fails within it.
    publish_timeout: float = Field(default=2.0, gt=0, le=30)
    #: Seconds before the broker hands an unacknowledged task (its worker died) to another
    #: worker. None: twice the longest registered task timeout, at least one hour.
    visibility_timeout: int | None = Field(default=None, ge=1)
    #: Seconds Celery's hard time limit allows beyond a task's own timeout. execute() enforces
    #: the timeout itself; the hard limit only fires when a body blocks its event loop, and
    #: kills the pool child (the main process then settles the record, see app.workers.base).
    #: The chart passes its own value (tasklane.worker.timeLimitMarginSeconds), from which it
    #: also sizes the worker's termination grace period; this default is for runs without it.
    time_limit_margin: float = Field(default=30.0, ge=0)

    #: Port of the Celery worker's own /metrics endpoint (its main process serves every pool
    #: child's samples from PROMETHEUS_MULTIPROC_DIR); 0 turns it off.
    worker_metrics_port: int = Field(default=9464, ge=0, le=65_535)
    #: Address that endpoint binds (all interfaces in a pod; 127.0.0.1 locally if preferred).
    worker_metrics_host: str = "0.0.0.0"

    # -- Kubernetes awareness (app/core/kubernetes) ---------------------------------------------
    #: Follow the worker Deployments and their KEDA ScaledObjects from the api: "auto" = on
    #: inside a cluster (KUBERNETES_SERVICE_HOST set) when TASKLANE_WORKER_SELECTOR or
    #: TASKLANE_WORKER_DEPLOYMENT says which.
    kubernetes: Literal["auto", "on", "off"] = "auto"
    #: Namespace of the worker Deployment; default: the pod's service-account namespace, else
    #: "default".
    namespace: str | None = Field(default=None, min_length=1)
    #: A labelSelector of the worker Deployments, one per pool (the chart sets
    #: `app.kubernetes.io/instance=<release>,app.kubernetes.io/component=worker`); wins over
    #: worker_deployment.
    worker_selector: str | None = Field(default=None, min_length=1)
    #: One worker Deployment by name (k8s/ manifests and releases of charts before pools).
    worker_deployment: str | None = Field(default=None, min_length=1)
    #: The KEDA ScaledObject that scales it; default: the Deployment's name.
    scaled_object: str | None = Field(default=None, min_length=1)

    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"

    @field_validator("task_modules", "heavy_tasks", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("routes", mode="before")
    @classmethod
    def _split_routes(cls, value: object) -> object:
        return _name_pairs(value, "TASKLANE_ROUTES", "name=executor")

    @field_validator("rate_limits", mode="before")
    @classmethod
    def _split_rate_limits(cls, value: object) -> object:
        return _name_pairs(value, "TASKLANE_RATE_LIMITS", "name=limit")

    @cached_property
    def resolved_executor(self) -> ExecutorKind:
        if self.executor != "auto":
            return self.executor
        return "hybrid" if self.celery_broker_url else "background"

    @cached_property
    def resolved_store(self) -> StoreKind:
        if self.store != "auto":
            return self.store
        return "redis" if self.store_redis_url else "memory"

    @cached_property
    def store_redis_url(self) -> str | None:
        """Where records live: REDIS_URL, else the broker when it is Redis."""
        return self.redis_url or self.broker_redis_url

    @cached_property
    def broker_redis_url(self) -> str | None:
        """CELERY_BROKER_URL when it is a Redis (its queue lists can be read), else None."""
        broker = self.celery_broker_url or ""
        return broker if urlsplit(broker).scheme in REDIS_SCHEMES else None

    @cached_property
    def store_redis_variable(self) -> str:
        """The variable store_redis_url came from, for messages that tell what to fix."""
        return "REDIS_URL" if self.redis_url else "CELERY_BROKER_URL"

    @cached_property
    def scheduler_enabled(self) -> bool:
        if self.scheduler != "auto":
            return self.scheduler == "on"
        return self.resolved_executor == "background"

    @cached_property
    def kubernetes_enabled(self) -> bool:
        """Should the api follow the worker Deployments? "auto": in a cluster, told which."""
        if self.kubernetes == "off":
            return False
        if self.kubernetes == "on":
            return True
        told = bool(self.worker_selector or self.worker_deployment)
        return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and told

    @cached_property
    def resolved_namespace(self) -> str:
        """TASKLANE_NAMESPACE, else the mounted service-account namespace, else "default"."""
        if self.namespace:
            return self.namespace
        try:
            mounted = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        except OSError:
            mounted = ""
        return mounted or "default"

    @cached_property
    def resolved_scaled_object(self) -> str | None:
        """The ScaledObject to follow: TASKLANE_SCALED_OBJECT, else the Deployment's name."""
        return self.scaled_object or self.worker_deployment

    def check(self) -> None:
        """Fail fast on combinations that cannot work, naming the variable to fix."""
        if self.resolved_store == "redis" and not self.store_redis_url:
            raise ValueError("TASKLANE_STORE=redis needs REDIS_URL (or a redis CELERY_BROKER_URL)")
        if self.resolved_executor in ("celery", "hybrid") and not self.celery_broker_url:
            raise ValueError(
                f"TASKLANE_EXECUTOR={self.resolved_executor} needs CELERY_BROKER_URL to be set"
            )
        if self.resolved_executor in ("celery", "hybrid") and self.resolved_store == "memory":
            raise ValueError(
                "Celery workers cannot see an in-memory store: "
                "set REDIS_URL or TASKLANE_STORE=redis"
            )
        if self.resolved_store == "memory" and self.memory_store_max_bytes < self.max_args_bytes:
            raise ValueError(
                "TASKLANE_MEMORY_STORE_MAX_BYTES must be at least TASKLANE_MAX_ARGS_BYTES "
                "(else a task the submit accepts could never be stored)"
            )
        if self.kubernetes == "on" and not (self.worker_selector or self.worker_deployment):
            raise ValueError(
                "TASKLANE_KUBERNETES=on needs TASKLANE_WORKER_SELECTOR (the worker Deployments' "
                "labels) or TASKLANE_WORKER_DEPLOYMENT (the worker Deployment)"
            )


def _name_pairs(value: object, variable: str, form: str) -> object:
    """Split "a=x,b=y" into {"a": "x", "b": "y"}; anything but a string is left to pydantic.

    Raises ValueError naming `variable` and the entry that is not `form`.
    """
    if not isinstance(value, str):
        return value
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, setting = item.partition("=")
        if not sep or not name.strip() or not setting.strip():
            raise ValueError(f"{variable} entry {item!r} is not {form}")
        pairs[name.strip()] = setting.strip()
    return pairs
