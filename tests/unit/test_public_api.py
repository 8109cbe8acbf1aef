"""``taskiq_batching``'s public names."""

import pytest

import taskiq_batching

pytestmark = pytest.mark.timeout(10)


def isort_order(name: str) -> tuple[int, str]:
    """Constants, then classes, then functions, each sorted (isort's order)."""
    kind = 0 if name.isupper() else 1 if name[0].isupper() else 2
    return kind, name


def test_public_api_is_sorted_and_complete() -> None:
    names = taskiq_batching.__all__
    assert names == sorted(names, key=isort_order)
    assert len(set(names)) == len(names)
    for name in names:
        assert getattr(taskiq_batching, name) is not None


def test_every_public_error_is_a_batching_error() -> None:
    for name in taskiq_batching.__all__:
        value = getattr(taskiq_batching, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, taskiq_batching.BatchingError), name
