"""How tasks are declared and sent, and which middleware hooks run, in taskiq.

Tested with taskiq 0.13.0, the only release ``pyproject.toml`` allows
(``>=0.13,<0.14``); ``.ci/matrix`` runs the tests of this module on
every row.
"""

import functools
from collections.abc import Callable
from typing import Any

from taskiq import AsyncBroker, AsyncTaskiqDecoratedTask, BrokerMessage, TaskiqMessage
from taskiq.abc.middleware import TaskiqMiddleware
from taskiq.kicker import AsyncKicker


def swap_task_class(
    broker: AsyncBroker, wrap: Callable[[type[Any]], type[Any]]
) -> None:
    """Make ``@broker.task`` build its tasks with ``wrap(its class)``.

    Relies on: ``AsyncBroker.task`` (and ``register_task``, through it)
    building every task as ``self.decorator_class(broker=..., task_name=...,
    original_func=..., labels=..., return_type=...)``, an undocumented
    instance attribute (taskiq's shared broker sets it too). taskiq's open
    PR #618 builds tasks without it: then batched tasks are adopted when
    they are registered (``retype_task``, ``guard_declarations``).

    :param broker: the broker.
    :param wrap: its task class, made a batching one.
    """
    broker.decorator_class = wrap(broker.decorator_class)


def retype_task(task: AsyncTaskiqDecoratedTask[Any, Any], cls: type[Any]) -> bool:
    """Make a task already built an instance of ``cls`` (a subclass of its class).

    Relies on: taskiq's task classes being plain classes (no ``__slots__``,
    no state outside the instance's ``__dict__``), whose constructor keeps
    ``broker``, ``task_name``, ``original_func``, ``labels`` and
    ``return_type`` as attributes: a subclass that adds methods only can
    take the instance over.

    :param task: a task, as taskiq built it.
    :param cls: a subclass of its class, adding methods only.
    :return: False when the instance cannot change class.
    """
    if not isinstance(task, AsyncTaskiqDecoratedTask) or not issubclass(
        cls, type(task)
    ):
        return False
    try:
        task.__class__ = cls
    except TypeError:  # another layout (slots): cannot change class
        return False
    return True


def guard_declarations(check: Callable[[AsyncBroker, Any], None]) -> None:
    """Run ``check(broker, task)`` on every task any broker registers.

    How a batched task declared on a broker without ``BatchingMiddleware``
    fails when it is declared instead of at run time, and how one built
    without the broker's task class is noticed. Installed once per process.

    Relies on: ``AsyncBroker.task`` (and ``register_task``) registering
    each task it built with ``self._register_task(task_name, task)``, a
    private method. A broker class that overrides it without calling it
    (taskiq's ``AsyncSharedBroker``) is not checked.

    :param check: raises to refuse a declaration.
    """
    registered = AsyncBroker._register_task
    if getattr(registered, "_taskiq_batching_guard", False):
        return

    @functools.wraps(registered)
    def register(self: AsyncBroker, task_name: str, task: Any) -> None:
        check(self, task)
        registered(self, task_name, task)

    register._taskiq_batching_guard = True  # type: ignore[attr-defined]
    AsyncBroker._register_task = register  # type: ignore[method-assign]


def overrides(middleware: TaskiqMiddleware, hook: str) -> bool:
    """Whether a middleware implements a hook, by taskiq's own test.

    Relies on: taskiq calling a hook only when the middleware's class
    overrides it (``middleware.__class__.pre_execute !=
    TaskiqMiddleware.pre_execute``), in ``Receiver`` and ``AsyncKicker``.

    :param middleware: a middleware.
    :param hook: a hook name (``pre_execute``, ``post_save``...).
    :return: whether taskiq would call it.
    """
    return bool(getattr(type(middleware), hook) != getattr(TaskiqMiddleware, hook))


def prepare_message(
    kicker: AsyncKicker[Any, Any], *args: Any, **kwargs: Any
) -> TaskiqMessage:
    """The message ``kicker.kiq(*args, **kwargs)`` would send.

    Relies on: ``AsyncKicker._prepare_message(*args, **kwargs)``, the
    private method ``kiq`` builds its message with (new task_id, labels,
    prepared arguments), before ``pre_send`` middlewares.

    :param kicker: a kicker.
    :param args: positional arguments.
    :param kwargs: keyword arguments.
    :return: the message.
    """
    return kicker._prepare_message(*args, **kwargs)


def prepare_arg(kicker: AsyncKicker[Any, Any], value: Any) -> Any:
    """An argument as ``kiq`` puts it in a message (pydantic models dumped).

    Relies on: ``AsyncKicker._prepare_arg(value)``, the private method
    ``_prepare_message`` prepares each argument with.

    :param kicker: a kicker.
    :param value: the argument.
    :return: the prepared argument.
    """
    return kicker._prepare_arg(value)


def broker_message(
    task_id: str, task_name: str, payload: bytes, labels: dict[str, Any]
) -> BrokerMessage:
    """A ``BrokerMessage`` without validating its fields again.

    Relies on: ``BrokerMessage`` being a pydantic model of exactly these
    four fields, which the formatter fills from a ``TaskiqMessage``
    already validated (pydantic's public ``model_construct``).

    :param task_id: its task_id.
    :param task_name: its task name.
    :param payload: the encoded message.
    :param labels: its labels.
    :return: the message.
    """
    return BrokerMessage.model_construct(
        task_id=task_id, task_name=task_name, message=payload, labels=labels
    )
