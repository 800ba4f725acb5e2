"""The Celery app's configuration, the bound tasks, and `tasklane worker|beat` argv."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from celery.exceptions import ImproperlyConfigured

from app import cli
from app.config import Settings
from app.core.tasks.errors import InvalidTaskArgs
from app.core.tasks.models import DEFAULT_PRIORITY, TaskSpec
from app.core.tasks.queues import QueueRouting
from app.core.tasks.registry import TaskRegistry, registry
from app.logs import JsonFormatter, TextFormatter
from app.tasks.schedule import SCHEDULE
from app.workers import celery_app as module
from app.workers.celery_app import require_broker
from app.workers.celery_config import (
    MIN_VISIBILITY_TIMEOUT,
    TasklaneCelery,
    create_celery_app,
    task_routes,
    time_limit,
    visibility_timeout,
)
from app.workers.heartbeat import Heartbeat

BROKER = "redis://127.0.0.1:1/0"
#: Settings' default; the chart passes the same number (tests/chart/test_worker.py proves it).
TIME_LIMIT_MARGIN = Settings.model_fields["time_limit_margin"].default


def settings(**values: Any) -> Settings:
    return Settings(celery_broker_url=BROKER, **values)


@pytest.fixture
def app() -> TasklaneCelery:
    return create_celery_app(settings())


def _noop() -> None:
    return None


def spec(name: str, **values: Any) -> TaskSpec:
    return TaskSpec(name=name, func=_noop, **values)


def test_celery_a_finds_the_app_the_guide_names() -> None:
    assert module.app is module.celery_app
    assert module.celery_app.main == "tasklane"
    assert "app.workers.tasks" in module.celery_app.conf.include


def test_messages_are_json_only(app: TasklaneCelery) -> None:
    conf = app.conf
    assert (conf.task_serializer, conf.result_serializer) == ("json", "json")
    assert list(conf.accept_content) == ["json"]


def test_delivery_is_at_least_once_and_one_message_per_process(app: TasklaneCelery) -> None:
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_track_started is True
    assert conf.broker_connection_retry_on_startup is True
    assert conf.worker_send_task_events is False
    assert conf.worker_hijack_root_logger is False


def test_broker_timeouts_follow_the_publish_timeout() -> None:
    conf = create_celery_app(settings(publish_timeout=1.5)).conf
    options = conf.broker_transport_options
    assert conf.broker_url == BROKER
    assert conf.broker_connection_timeout == 1.5
    assert options["socket_connect_timeout"] == 1.5
    assert options["socket_timeout"] >= 1.5


def test_kombu_keeps_priorities_in_printable_sub_lists_for_publisher_and_worker_alike() -> None:
    """One set of transport options for the api's publisher and the workers: kombu's priority
    emulation with sep ":" (lists heavy, heavy:3, heavy:6, heavy:9), every queue's lowest step
    first; the visibility timeout and sweeps are kept beside them."""
    conf = create_celery_app(settings()).conf
    options = conf.broker_transport_options
    assert options["sep"] == ":"
    assert options["priority_steps"] == [0, 3, 6, 9]
    assert options["queue_order_strategy"] == "priority"
    assert options["visibility_timeout"] >= MIN_VISIBILITY_TIMEOUT
    assert "unacked_restore_interval" in options
    # Celery's own tasks (and any bound by hand) publish at the middle level, not at 0.
    assert conf.task_default_priority == DEFAULT_PRIORITY


def test_visibility_timeout_outlasts_the_longest_task(app: TasklaneCelery) -> None:
    longest = max(spec.timeout for spec in registry if spec.timeout)
    visibility = app.conf.broker_transport_options["visibility_timeout"]
    assert visibility > longest + TIME_LIMIT_MARGIN
    assert visibility >= MIN_VISIBILITY_TIMEOUT


def test_visibility_timeout_doubles_a_long_timeout_and_honours_the_setting() -> None:
    long_tasks = TaskRegistry()
    long_tasks.register(spec("long", timeout=7200))

    assert visibility_timeout(settings(), long_tasks) == 2 * (7200 + TIME_LIMIT_MARGIN) + 1
    assert visibility_timeout(settings(visibility_timeout=5), long_tasks) == 5
    assert visibility_timeout(settings(time_limit_margin=100), long_tasks) == 2 * 7300 + 1


def test_the_hard_time_limit_is_the_timeout_plus_the_configured_margin() -> None:
    timed, untimed = spec("timed", timeout=60), spec("untimed")

    assert time_limit(timed, settings()) == 60 + TIME_LIMIT_MARGIN
    assert time_limit(timed, settings(time_limit_margin=5)) == 65
    assert time_limit(untimed, settings(time_limit_margin=5)) is None


def test_result_backend_only_when_configured(app: TasklaneCelery) -> None:
    assert app.conf.result_backend is None
    assert app.conf.task_ignore_result is True

    with_backend = create_celery_app(settings(celery_result_backend="redis://127.0.0.1:1/1"))

    assert with_backend.conf.result_backend == "redis://127.0.0.1:1/1"
    assert with_backend.conf.task_ignore_result is False


def test_each_queue_has_its_own_exchange_and_binding() -> None:
    app = create_celery_app(settings(light_queue="quick", heavy_queue="slow"))

    queues = {queue.name: queue for queue in app.conf.task_queues}
    assert set(queues) == {"quick", "slow"}
    for name, queue in queues.items():
        assert (queue.exchange.name, queue.routing_key) == (name, name)
    assert app.conf.task_default_queue == "quick"


@pytest.mark.parametrize(
    ("task", "heavy_tasks", "queue"),
    [
        (spec("light_one"), set(), "L"),
        (spec("heavy_one", weight="heavy", queue="heavy"), set(), "H"),
        (spec("promoted"), {"promoted"}, "H"),
        (spec("custom", queue="gpu"), {"custom"}, "gpu"),
    ],
)
def test_queue_for_follows_weight_heavy_tasks_and_custom_queues(
    task: TaskSpec, heavy_tasks: set[str], queue: str
) -> None:
    configured = settings(light_queue="L", heavy_queue="H", heavy_tasks=heavy_tasks)
    assert QueueRouting.from_settings(configured).queue_for(task) == queue


def test_every_registered_task_is_routed_to_its_queue(app: TasklaneCelery) -> None:
    routes = app.conf.task_routes
    assert set(routes) == set(registry.names())
    assert routes["process_speak_audio"] == {"queue": "heavy"}
    assert routes["calculate_all_ratings"] == {"queue": "heavy"}
    assert routes["sync_impressions_from_redis"] == {"queue": "heavy"}
    assert routes["calculate_rating"] == {"queue": "light"}
    assert app.amqp.router.route({}, "process_speak_audio")["queue"].name == "heavy"


def test_routes_honour_heavy_tasks_from_the_environment() -> None:
    routes = task_routes(settings(heavy_tasks={"send_notification"}))

    assert routes["send_notification"] == {"queue": "heavy"}


def test_beat_schedule_is_the_one_schedule(app: TasklaneCelery) -> None:
    queue_for = QueueRouting.from_settings(settings()).queue_for
    expected = {
        entry.name: {
            "task": entry.task,
            "schedule": entry.every,
            "args": entry.args,
            "kwargs": entry.kwargs,
            "options": {"queue": queue_for(registry.get(entry.task))},
        }
        for entry in SCHEDULE
    }
    assert app.conf.beat_schedule == expected
    assert app.conf.beat_schedule["sync-impressions"]["options"] == {"queue": "heavy"}


def test_worker_blueprint_includes_the_heartbeat(app: TasklaneCelery) -> None:
    assert Heartbeat in app.steps["worker"]
    assert app.tasklane_settings.celery_broker_url == BROKER


def test_every_registry_task_is_bound_under_its_name() -> None:
    from app.workers import tasks

    assert set(registry.names()) <= set(tasks.bound)
    for name, bound in tasks.bound.items():
        assert bound.name == name
        assert module.celery_app.tasks[name] is bound
        assert bound.acks_late
        assert bound.reject_on_worker_lost
        assert bound.max_retries is None
        timeout = registry.get(name).timeout
        assert bound.time_limit == (None if timeout is None else timeout + TIME_LIMIT_MARGIN)
    from app.workers.tasks import process_speak_audio  # the guide's legacy import

    assert process_speak_audio is tasks.bound["process_speak_audio"]


def test_delay_without_a_broker_fails_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.workers.tasks import process_speak_audio

    monkeypatch.setattr(module.celery_app.conf, "broker_url", None)

    with pytest.raises(ImproperlyConfigured, match="CELERY_BROKER_URL"):
        process_speak_audio.delay("resource", ["AAAA"], "ada")


def test_delay_checks_arguments_before_publishing(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.workers.tasks import process_speak_audio

    monkeypatch.setattr(module.celery_app.conf, "broker_url", BROKER)

    with pytest.raises(InvalidTaskArgs, match="audio_chunks"):
        process_speak_audio.delay("resource", "not a list")


def test_worker_and_beat_exit_naming_a_missing_broker() -> None:
    with pytest.raises(SystemExit, match="CELERY_BROKER_URL"):
        require_broker(Settings(celery_broker_url=None), "worker")
    with pytest.raises(SystemExit, match="TASKLANE_STORE=redis needs REDIS_URL"):
        require_broker(
            Settings(celery_broker_url="amqp://broker//", store="redis", redis_url=None), "beat"
        )


def test_worker_exits_naming_a_bad_rate_limit_override() -> None:
    settings = Settings(celery_broker_url="redis://127.0.0.1:1/0", rate_limits="no_such_task=10/s")
    with pytest.raises(SystemExit, match=r"TASKLANE_RATE_LIMITS entry 'no_such_task=10/s'"):
        require_broker(settings, "worker")


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_worker_logs_through_our_formatter_at_the_command_line_level(
    root_logger: logging.Logger,
) -> None:
    expected = JsonFormatter if module.settings.log_format == "json" else TextFormatter

    module._setup_logging(loglevel=logging.DEBUG)
    assert root_logger.level == logging.DEBUG
    assert isinstance(root_logger.handlers[0].formatter, expected)

    module._setup_logging(loglevel=0)  # a pool child without CELERY_LOG_LEVEL
    assert root_logger.level == logging.getLevelName(module.settings.log_level.upper())


def test_a_short_visibility_timeout_is_swept_for_often() -> None:
    options = create_celery_app(settings(visibility_timeout=3)).conf.broker_transport_options

    assert options["visibility_timeout"] == 3
    assert (options["unacked_restore_interval"], options["unacked_restore_throttle"]) == (1, 1)


# -- tasklane worker | beat ------------------------------------------------------------------


class Exec:
    """Records what would have replaced the process."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(self, program: str, argv: Sequence[str]) -> None:
        self.calls.append((program, list(argv)))


@pytest.fixture
def broker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "TASKLANE_STORE", "TASKLANE_EXECUTOR", "TASKLANE_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    for name in ("LIGHT_QUEUE", "HEAVY_QUEUE", "REDIS_URL", "CELERY_BROKER_URL"):
        monkeypatch.delenv(f"TASKLANE_{name}", raising=False)
    monkeypatch.setenv("CELERY_BROKER_URL", BROKER)


def celery_tail(argv: list[str]) -> list[str]:
    """argv after the program: from `-A` on."""
    return argv[argv.index("-A") :]


@pytest.mark.usefixtures("broker_env")
def test_tasklane_worker_execs_the_guides_celery_worker() -> None:
    recorder = Exec()

    assert cli.main(["worker"], exec_function=recorder) == 0

    [(program, argv)] = recorder.calls
    assert program == argv[0]
    assert argv[0].endswith("celery") or argv[1:3] == ["-m", "celery"]
    assert celery_tail(argv) == [
        "-A",
        "app.workers.celery_app",
        "worker",
        "--queues",
        "light,heavy",
        "--pool",
        "prefork",
        "--loglevel",
        "INFO",
    ]


@pytest.mark.usefixtures("broker_env")
def test_tasklane_worker_passes_its_options_through() -> None:
    recorder = Exec()

    code = cli.main(
        [
            "worker",
            "--queues",
            "heavy",
            "--concurrency",
            "3",
            "--hostname",
            "w1@%h",
            "--loglevel",
            "debug",
            "--pool",
            "threads",
        ],
        exec_function=recorder,
    )

    assert code == 0
    assert celery_tail(recorder.calls[0][1]) == [
        "-A",
        "app.workers.celery_app",
        "worker",
        "--queues",
        "heavy",
        "--concurrency",
        "3",
        "--hostname",
        "w1@%h",
        "--pool",
        "threads",
        "--loglevel",
        "DEBUG",
    ]


@pytest.mark.usefixtures("broker_env")
def test_tasklane_beat_execs_celery_beat_with_a_writable_schedule() -> None:
    recorder = Exec()

    assert cli.main(["beat"], exec_function=recorder) == 0
    assert cli.main(["beat", "--schedule", "/data/beat"], exec_function=recorder) == 0

    default, custom = (celery_tail(argv) for _, argv in recorder.calls)
    assert default == [
        "-A",
        "app.workers.celery_app",
        "beat",
        "--schedule",
        cli.DEFAULT_BEAT_SCHEDULE,
        "--loglevel",
        "INFO",
    ]
    assert cli.DEFAULT_BEAT_SCHEDULE.endswith("tasklane-celerybeat-schedule")
    assert custom[3:5] == ["--schedule", "/data/beat"]


@pytest.mark.parametrize("command", ["worker", "beat"])
def test_tasklane_celery_commands_refuse_to_start_without_a_broker(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("TASKLANE_CELERY_BROKER_URL", raising=False)
    recorder = Exec()

    assert cli.main([command], exec_function=recorder) == 2

    assert recorder.calls == []
    assert "CELERY_BROKER_URL is not set" in capsys.readouterr().err


@pytest.mark.usefixtures("broker_env")
@pytest.mark.parametrize(
    "argv",
    [["worker", "--pool", "gevent"], ["worker", "--queues", ","], ["worker", "--concurrency", "0"]],
)
def test_tasklane_worker_rejects_bad_values(argv: list[str]) -> None:
    recorder = Exec()

    with pytest.raises(SystemExit) as exited:
        cli.main(argv, exec_function=recorder)

    assert exited.value.code == 2
    assert recorder.calls == []


@pytest.mark.usefixtures("broker_env")
def test_a_failed_exec_is_reported() -> None:
    def missing(program: str, argv: Sequence[str]) -> None:
        raise FileNotFoundError(2, "No such file or directory", program)

    assert cli.main(["beat"], exec_function=missing) == 127
