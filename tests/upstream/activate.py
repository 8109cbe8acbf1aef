"""Pytest plugin: make taskiq-batching active on every broker a suite builds.

Load it with ``-p tests.upstream.activate``. When the suite under test has
a ``tests`` package of its own (taskiq's and taskiq-redis's do), put this
folder on ``PYTHONPATH`` and load it as ``-p activate`` instead: this module
imports nothing from ``tests``, so it works under either name.

From the start of the pytest run, every broker whose construction
completes (the outermost ``__init__`` of an ``AsyncBroker`` subclass
returned, and ``AsyncBroker.__init__`` ran in it) gets a
``BatchingMiddleware()`` and one batched task, ``taskiq_batching_probe``.
Brokers that exist already (taskiq's ``async_shared_broker``, brokers
built at import time) get them when the patch is installed. Plain tasks
thus run on brokers where the plugin is active, and whatever it changes
for them shows up as failing upstream tests.

An autouse fixture proves, test by test, that this really happened: the
patch must be in place when the test starts; every broker built during
the test must have been activated; and no live broker may lack the
middleware without the patch knowing of it (a scan of the garbage
collector's objects). Otherwise the test errors. A summary line ends the
run; when ``TASKIQ_BATCHING_UPSTREAM_REPORT`` names a file, the same
figures are written there as JSON for the runner scripts.

With ``TASKIQ_BATCHING_UPSTREAM_RECEIVER=batching``, ``taskiq.receiver.Receiver``
is ``BatchingReceiver`` (a counting subclass) for the whole run, so the
suite's Receivers hand themselves to the plugin as under ``taskiq worker
--receiver taskiq_batching:BatchingReceiver``; the report counts the
Receivers built and the ``listen()`` calls served by that hand-off.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import sys
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import taskiq
import taskiq.receiver
from taskiq.abc.broker import AsyncBroker

import taskiq_batching
from taskiq_batching import BatchingMiddleware, BatchingReceiver
from taskiq_batching.worker import hook

PROBE_TASK_NAME = "taskiq_batching_probe"
REPORT_ENV = "TASKIQ_BATCHING_UPSTREAM_REPORT"
#: ``batching``: the suite's Receivers are BatchingReceivers.
RECEIVER_ENV = "TASKIQ_BATCHING_UPSTREAM_RECEIVER"
_WRAPPED = "__taskiq_batching_upstream_wrapped__"
#: Packages under test whose location the report gives, when imported.
_REPORTED_PACKAGES = ("taskiq", "taskiq_batching", "taskiq_redis")


async def probe(items: list[int]) -> int:
    """The batched task declared on every broker."""
    return sum(items)


def _has_batching(broker: AsyncBroker) -> bool:
    return any(isinstance(m, BatchingMiddleware) for m in broker.middlewares)


def _initialised(obj: object) -> bool:
    """Whether ``AsyncBroker.__init__`` ran on this object."""
    return isinstance(getattr(obj, "__dict__", {}).get("middlewares"), list)


def _broker_classes() -> set[type[Any]]:
    found: set[type[Any]] = set()
    pending: list[type[Any]] = [AsyncBroker]
    while pending:
        cls = pending.pop()
        if cls not in found:
            found.add(cls)
            pending.extend(cls.__subclasses__())
    return found


def _describe(broker: object) -> str:
    cls = type(broker)
    return f"{cls.__module__}.{cls.__qualname__} at {id(broker):#x}"


class _Refs:
    """Objects held weakly and compared by identity (brokers may be unhashable)."""

    def __init__(self) -> None:
        self._refs: dict[int, Callable[[], Any]] = {}

    def add(self, obj: object) -> None:
        key = id(obj)
        refs = self._refs

        def forget(_: object) -> None:
            refs.pop(key, None)

        try:
            self._refs[key] = weakref.ref(obj, forget)
        except TypeError:  # not weakly referenceable: hold it then
            self._refs[key] = lambda: obj

    def __contains__(self, obj: object) -> bool:
        ref = self._refs.get(id(obj))
        return ref is not None and ref() is obj

    def alive(self) -> list[Any]:
        return [obj for ref in list(self._refs.values()) if (obj := ref()) is not None]

    def clear(self) -> None:
        self._refs.clear()


class Activation:
    """The patch of the broker classes, and what it has done so far."""

    def __init__(self) -> None:
        self.installed = False
        self._inits: dict[type[Any], Callable[..., None]] = {}
        self._had_init_subclass = False
        self._init_subclass: Any = None
        self._depth: dict[int, int] = {}
        self._busy = False
        #: Brokers that got the middleware and the probe from this plugin.
        self.activated = _Refs()
        #: Brokers whose construction or activation raised, or that were
        #: built while activating another one.
        self.exempt = _Refs()
        #: Brokers found without the middleware, already reported.
        self.reported = _Refs()
        #: Brokers built during the current test.
        self.built = _Refs()
        self.brokers = 0
        self.preexisting = 0
        self.tests = 0
        self.tests_with_brokers = 0
        self.unpatched: list[str] = []
        self.removed: list[str] = []

    # -- the patch ---------------------------------------------------------

    def install(self) -> None:
        """Patch every broker class, and activate the brokers alive now."""
        if self.installed:
            return
        for cls in _broker_classes():
            self._wrap(cls)
        self._had_init_subclass = "__init_subclass__" in AsyncBroker.__dict__
        original = AsyncBroker.__dict__.get("__init_subclass__")
        self._init_subclass = original
        wrap = self._wrap

        def init_subclass(cls: type[AsyncBroker], /, **kwargs: Any) -> None:
            if original is not None:
                original.__get__(None, cls)(**kwargs)
            else:
                super(AsyncBroker, cls).__init_subclass__(**kwargs)
            wrap(cls)

        setattr(AsyncBroker, "__init_subclass__", classmethod(init_subclass))  # noqa: B010
        self.installed = True
        for broker in self.live_brokers():
            if broker not in self.activated and not _has_batching(broker):
                self._activate(broker)
                self.preexisting += 1

    def uninstall(self) -> None:
        """Restore the broker classes (brokers keep their middleware)."""
        if not self.installed:
            return
        for cls, init in self._inits.items():
            if getattr(cls.__dict__.get("__init__"), _WRAPPED, False):
                setattr(cls, "__init__", init)  # noqa: B010
        self._inits.clear()
        if self._had_init_subclass:
            setattr(AsyncBroker, "__init_subclass__", self._init_subclass)  # noqa: B010
        else:
            delattr(AsyncBroker, "__init_subclass__")
        self.installed = False

    def intact(self) -> bool:
        """Whether the patch is still in place on ``AsyncBroker``."""
        init = AsyncBroker.__dict__.get("__init__")
        return self.installed and getattr(init, _WRAPPED, False) is True

    def _wrap(self, cls: type[Any]) -> None:
        init = cls.__dict__.get("__init__")
        if not callable(init) or getattr(init, _WRAPPED, False):
            return
        construct = self._construct

        @functools.wraps(init)
        def __init__(broker: Any, *args: Any, **kwargs: Any) -> None:
            construct(init, broker, args, kwargs)

        setattr(__init__, _WRAPPED, True)
        self._inits[cls] = init
        setattr(cls, "__init__", __init__)  # noqa: B010

    def _construct(
        self,
        init: Callable[..., None],
        broker: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        # Subclasses call super().__init__() and then go on setting their
        # own attributes (AsyncSharedBroker even resets decorator_class),
        # so the broker is activated when the OUTERMOST __init__ returns.
        key = id(broker)
        depth = self._depth.get(key, 0)
        self._depth[key] = depth + 1
        try:
            init(broker, *args, **kwargs)
        except BaseException:
            if depth == 0:
                self.exempt.add(broker)
            raise
        finally:
            if depth:
                self._depth[key] = depth
            else:
                del self._depth[key]
        if depth == 0 and self.installed and _initialised(broker):
            self._activate(broker)
            self.built.add(broker)

    def _activate(self, broker: AsyncBroker) -> None:
        if not _initialised(broker):
            return  # AsyncBroker.__init__ never ran: not a usable broker
        if self._busy:
            # Built by the plugin itself while activating another broker.
            self.exempt.add(broker)
            return
        self._busy = True
        try:
            if not _has_batching(broker):
                broker.add_middlewares(BatchingMiddleware())
            self._declare_probe(broker)
        except BaseException:
            self.exempt.add(broker)
            raise
        finally:
            self._busy = False
        self.activated.add(broker)
        self.brokers += 1

    @staticmethod
    def _declare_probe(broker: AsyncBroker) -> None:
        # find_task falls back to the global registry, where
        # AsyncSharedBroker puts its tasks: check whose probe it is.
        task = broker.find_task(PROBE_TASK_NAME)
        if task is None or task.broker is not broker:
            broker.register_task(
                probe,
                task_name=PROBE_TASK_NAME,
                batch=True,
                batch_size=10,
                batch_timeout=1,
            )

    # -- the checks --------------------------------------------------------

    def live_brokers(self) -> list[AsyncBroker]:
        """Every initialised broker the garbage collector knows of."""
        classes = _broker_classes()
        return [
            obj
            for obj in gc.get_objects()
            if type(obj) in classes and _initialised(obj)
        ]

    def before_test(self) -> None:
        """Check the patch and re-declare probes a registry reset removed."""
        if not self.intact():
            pytest.fail(
                "taskiq-batching upstream harness: the patch of "
                "AsyncBroker.__init__ is not in place (never installed, "
                "undone or overwritten); the plugin would not be active.",
                pytrace=False,
            )
        self.built.clear()
        self._busy = True
        try:
            for broker in self.activated.alive():
                self._declare_probe(broker)
        finally:
            self._busy = False

    def after_test(self, nodeid: str) -> list[str]:
        """Check the brokers of a test; return the problems found."""
        self.tests += 1
        problems: list[str] = []
        built = self.built.alive()
        if built:
            self.tests_with_brokers += 1
        for broker in built:
            if broker not in self.activated and broker not in self.exempt:
                problems.append(f"{_describe(broker)} was built but not activated")
            elif broker in self.activated and not _has_batching(broker):
                self.removed.append(f"{nodeid}: {_describe(broker)}")
        for broker in self.live_brokers():
            if (
                broker in self.activated
                or broker in self.exempt
                or broker in self.reported
                or _has_batching(broker)
            ):
                continue
            self.reported.add(broker)
            self.unpatched.append(f"{nodeid}: {_describe(broker)}")
            problems.append(
                f"{_describe(broker)} has no BatchingMiddleware and never went "
                "through the patched __init__: the plugin is not active on it",
            )
        self.built.clear()
        return problems

    def summary(self) -> dict[str, Any]:
        """The figures of the run, for the terminal and the report file."""
        return {
            "installed": self.installed,
            "tests": self.tests,
            "tests_with_brokers": self.tests_with_brokers,
            "brokers_activated": self.brokers,
            "brokers_preexisting": self.preexisting,
            "unpatched_brokers": self.unpatched,
            "middleware_removed_by_test": self.removed,
            "taskiq": f"{taskiq.__version__} {Path(taskiq.__file__ or '').parent}",
            "taskiq_batching": str(Path(taskiq_batching.__file__ or "").parent),
            "packages": {
                name: str(Path(getattr(sys.modules[name], "__file__", "") or "").parent)
                for name in _REPORTED_PACKAGES
                if name in sys.modules
            },
        }


class ReceiverSwap:
    """``taskiq.receiver.Receiver`` made a BatchingReceiver, and what it did."""

    def __init__(self) -> None:
        self.receiver = os.environ.get(RECEIVER_ENV) or "taskiq"
        self.built = 0
        self.handed = 0
        self._originals: dict[str, Any] = {}

    def install(self) -> None:
        """Swap the class the suite imports, before its modules are imported."""
        if self.receiver != "batching" or self._originals:
            return
        swap = self

        class CountingBatchingReceiver(BatchingReceiver):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                swap.built += 1

        handed_receiver = hook.handed_receiver

        def counting_handed_receiver(broker: AsyncBroker) -> Any:
            found = handed_receiver(broker)
            swap.handed += found is not None
            return found

        self._originals = {
            "receiver": taskiq.receiver.Receiver,
            "hook": handed_receiver,
        }
        taskiq.receiver.Receiver = CountingBatchingReceiver  # type: ignore[misc]
        hook.handed_receiver = counting_handed_receiver

    def uninstall(self) -> None:
        """Put taskiq's Receiver back."""
        if self._originals:
            taskiq.receiver.Receiver = self._originals.pop("receiver")  # type: ignore[misc]
            hook.handed_receiver = self._originals.pop("hook")

    def summary(self) -> dict[str, Any]:
        """The figures of the swap, for the report."""
        return {
            "receiver": self.receiver,
            "receivers_built": self.built,
            "listens_handed_off": self.handed,
        }


ACTIVATION = Activation()
SWAP = ReceiverSwap()


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """Patch before conftest files build brokers (``-p`` loading only)."""
    ACTIVATION.install()
    SWAP.install()


def pytest_configure(config: pytest.Config) -> None:
    """Patch, when loaded too late for ``pytest_load_initial_conftests``."""
    ACTIVATION.install()
    SWAP.install()


@pytest.fixture(autouse=True)
def _taskiq_batching_is_active(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test when the plugin was not active on one of its brokers."""
    ACTIVATION.before_test()
    yield
    problems = ACTIVATION.after_test(request.node.nodeid)
    if problems:
        pytest.fail(
            "taskiq-batching upstream harness:\n  " + "\n  ".join(problems),
            pytrace=False,
        )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say what the plugin did."""
    figures = ACTIVATION.summary()
    terminalreporter.write_sep("-", "taskiq-batching upstream harness")
    terminalreporter.write_line(
        f"BatchingMiddleware + {PROBE_TASK_NAME} added to "
        f"{figures['brokers_activated']} broker(s) "
        f"({figures['brokers_preexisting']} built before the patch); "
        f"{figures['tests_with_brokers']} of {figures['tests']} test(s) built "
        f"brokers; {len(figures['unpatched_brokers'])} broker(s) escaped the "
        f"patch; taskiq_batching from {figures['taskiq_batching']}",
    )
    for line in figures["middleware_removed_by_test"]:
        terminalreporter.write_line(f"middleware removed by the test: {line}")
    swap = SWAP.summary()
    terminalreporter.write_line(
        f"Receiver: {swap['receiver']} ({swap['receivers_built']} "
        f"BatchingReceiver(s) built, {swap['listens_handed_off']} listen() "
        "call(s) served by the hand-off)",
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    """Write the report file, then undo the patch."""
    report = os.environ.get(REPORT_ENV)
    if report:
        figures = ACTIVATION.summary() | SWAP.summary()
        Path(report).write_text(json.dumps(figures, indent=2))
    ACTIVATION.uninstall()
    SWAP.uninstall()
