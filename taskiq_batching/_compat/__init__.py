"""Every place taskiq-batching relies on internals of taskiq or another library.

Nothing else in the package touches a private attribute (ruff's ``SLF``
rule is on everywhere but here), nor relies on a behaviour the library
does not document. Each function says, under "Relies on:", what it
relies on; ``tests/unit/test_compat.py`` (and, for what needs a server,
``tests/integration/test_compat_brokers.py``) checks each against the
installed versions, on every row of ``.ci/matrix``; ``pyproject.toml``
bounds those versions. One module per library:

* ``receiver``: taskiq's worker side (``listen()``, the Receiver,
  ``InMemoryBroker``);
* ``taskiq``: declaring and sending tasks, middleware hooks;
* ``opentelemetry``: taskiq's ``OpenTelemetryMiddleware``;
* ``redis``: taskiq-redis;
* ``redis_py``: redis-py's connection-level API (imported by the Redis
  transports directly, not re-exported here: it imports redis);
* ``amqp``: taskiq-aio-pika, aio-pika, aiormq;
* ``nats``: nats-py;
* ``prometheus``: prometheus_client.
"""

from taskiq_batching._compat.amqp import (
    amqp_connect_like_reader,
    amqp_declare_queues,
    amqp_delay_queue_name,
    amqp_prefetch,
    amqp_priority_label,
    amqp_publish_frames,
    amqp_queue_settings,
    amqp_read_frames_with,
    amqp_take_deliveries,
    amqp_tap_frames,
)
from taskiq_batching._compat.nats import (
    nats_publish_each,
    nats_pull_subject,
    nats_subscribe_direct,
)
from taskiq_batching._compat.opentelemetry import (
    OTEL_MIDDLEWARE_MODULE,
    otel_message_span,
    otel_tracer,
)
from taskiq_batching._compat.prometheus import (
    prometheus_live_gauge_pids,
    prometheus_values_in_memory,
)
from taskiq_batching._compat.receiver import (
    Listen,
    ReceiverSettings,
    calling_receiver,
    in_memory_receiver,
    receiver_settings,
    route_callback,
    shadow_listen,
    share_stop_budget,
)
from taskiq_batching._compat.redis import (
    redis_result_key,
    redis_result_keys,
    redis_result_prefix,
)
from taskiq_batching._compat.taskiq import (
    broker_message,
    guard_declarations,
    overrides,
    prepare_arg,
    prepare_message,
    retype_task,
    swap_task_class,
)

__all__ = [
    "OTEL_MIDDLEWARE_MODULE",
    "Listen",
    "ReceiverSettings",
    "amqp_connect_like_reader",
    "amqp_declare_queues",
    "amqp_delay_queue_name",
    "amqp_prefetch",
    "amqp_priority_label",
    "amqp_queue_settings",
    "amqp_publish_frames",
    "amqp_read_frames_with",
    "amqp_take_deliveries",
    "amqp_tap_frames",
    "broker_message",
    "calling_receiver",
    "guard_declarations",
    "in_memory_receiver",
    "nats_publish_each",
    "nats_pull_subject",
    "nats_subscribe_direct",
    "otel_message_span",
    "otel_tracer",
    "overrides",
    "prepare_arg",
    "prepare_message",
    "prometheus_live_gauge_pids",
    "prometheus_values_in_memory",
    "receiver_settings",
    "redis_result_key",
    "redis_result_keys",
    "redis_result_prefix",
    "retype_task",
    "route_callback",
    "shadow_listen",
    "share_stop_budget",
    "swap_task_class",
]
