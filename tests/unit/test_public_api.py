"""``taskiq_batching``'s public names: ``__all__`` is the public API."""

import types

import pytest

import taskiq_batching

pytestmark = pytest.mark.timeout(10)

#: What a user writes, types and tests batched tasks with, the errors to
#: catch, and what observes batches. A change here is a change of the
#: public API: say it in CHANGELOG.md and docs/reference.md.
PUBLIC = [
    # Declaring and running batched tasks.
    "BatchInfo",
    "BatchedTask",
    "BatchingMiddleware",
    "BatchingReceiver",
    "batch_task",
    # Results of a batch.
    "PerItem",
    "per_item",
    # Sending: deadlines, map and its kill switches.
    "AnyFailed",
    "CountExceeded",
    "KillSwitch",
    "NotFinished",
    "NotSent",
    "RateExceeded",
    "deadline",
    # Observing batches.
    "BatchObserver",
    "BatchReport",
    "FlushReason",
    "TaskStatistics",
    # Errors.
    "BatchArgumentError",
    "BatchConfigError",
    "BatchItemError",
    "BatchResultError",
    "BatchTimeoutError",
    "BatchingError",
    "ConsumerNameInUseError",
    "KillSwitchTypeError",
    "ListSentAsItemError",
    "MiddlewareMissingError",
    "MissingDependencyError",
    "ResultBackendMissingError",
    "SendManyError",
]

#: Internals once exported, still importable from their own modules.
INTERNAL = {
    "DEFAULT_BATCH_CONCURRENCY": "taskiq_batching.settings",
    "DEFAULT_BATCH_SIZE": "taskiq_batching.settings",
    "BatchSettings": "taskiq_batching.settings",
    "parse_settings": "taskiq_batching.settings",
    "BatchingDecoratedTask": "taskiq_batching.tasks",
}


def isort_order(name: str) -> tuple[int, str]:
    """Constants, then classes, then functions, each sorted (isort's order)."""
    kind = 0 if name.isupper() else 1 if name[0].isupper() else 2
    return kind, name


def test_public_api_is_exactly_the_pinned_list() -> None:
    assert sorted(taskiq_batching.__all__) == sorted(PUBLIC)


def test_public_api_is_sorted_and_complete() -> None:
    names = taskiq_batching.__all__
    assert names == sorted(names, key=isort_order)
    assert len(set(names)) == len(names)
    for name in names:
        assert getattr(taskiq_batching, name) is not None


def test_the_package_exports_nothing_beyond_its_public_api() -> None:
    exported = {
        name
        for name, value in vars(taskiq_batching).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert exported == set(taskiq_batching.__all__)


@pytest.mark.parametrize("name", sorted(INTERNAL))
def test_an_internal_is_importable_from_its_module_only(name: str) -> None:
    module = __import__(INTERNAL[name], fromlist=[name])
    assert getattr(module, name) is not None
    assert not hasattr(taskiq_batching, name)


def test_every_public_error_is_a_batching_error() -> None:
    for name in taskiq_batching.__all__:
        value = getattr(taskiq_batching, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, taskiq_batching.BatchingError), name
