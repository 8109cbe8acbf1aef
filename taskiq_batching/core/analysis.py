"""Reading a batch function, once, when its task is declared.

A function whose first parameter cannot take a list fails here, with the
task's name, not when its first batch runs. What is read (item type,
extra parameters, dependencies) becomes a ``BatchSignature``
(``signature.py``), which the worker uses for every message.
"""

import collections.abc
import inspect
import typing
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter
from taskiq_dependencies import DependencyGraph
from taskiq_dependencies.dependency import Dependency

from taskiq_batching.core.signature import BatchSignature
from taskiq_batching.errors import BatchConfigError

_LIST_ORIGINS = (list, collections.abc.Sequence, collections.abc.MutableSequence)
#: Item types whose values of exactly that type pydantic validates as they
#: are (the same value back): such an item needs no validation call.
_PLAIN_ITEMS = (int, str, float, bool)
_POSITIONAL = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
)


def analyse(task_name: str, func: Callable[..., Any]) -> BatchSignature:
    """Check that ``func`` can be a batch function and describe it.

    :param task_name: used in error messages.
    :param func: the function given to ``@broker.task(batch=True)``.
    :raises BatchConfigError: when its first parameter cannot be a list.
    :return: its batch signature.
    """
    where = f"batched task {task_name!r}"
    try:
        signature = inspect.signature(func)
        hints = typing.get_type_hints(func, include_extras=True)
    except (TypeError, ValueError, NameError) as exc:
        raise BatchConfigError(f"{where}: cannot read its signature: {exc}") from exc
    params = list(signature.parameters.values())
    if not params or params[0].kind not in _POSITIONAL:
        raise BatchConfigError(
            f"{where}: the function's first parameter must be a positional "
            "parameter that takes the list of items, e.g. "
            "`async def f(items: list[int]) -> ...`.",
        )
    first = params[0]
    element = _item_type(where, first.name, hints.get(first.name))
    item_adapter = None if element is None else TypeAdapter(element)
    dependency_names = {p.name for p in params if _is_dependency(p)}
    extras = [
        param
        for param in params[1:]
        if param.name not in dependency_names
        and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
    ]
    adapters = {
        param.name: TypeAdapter(hints[param.name])
        for param in extras
        if hints.get(param.name, Any) is not Any
    }
    graph = DependencyGraph(func) if dependency_names else None
    keywords = [p for p in extras if p.kind != p.POSITIONAL_ONLY]
    return BatchSignature(
        func=func,
        items_name=first.name,
        item_adapter=item_adapter,
        plain_item=element if element in _PLAIN_ITEMS else None,
        positional=[p for p in extras if p.kind in _POSITIONAL],
        keywords=keywords,
        adapters=adapters,
        dependencies=graph,
        is_coroutine=inspect.iscoroutinefunction(func),
        takes_more_args=any(p.kind == p.VAR_POSITIONAL for p in params),
        takes_more_kwargs=any(p.kind == p.VAR_KEYWORD for p in params),
        names=frozenset(p.name for p in keywords) | dependency_names,
    )


def _item_type(where: str, name: str, hint: Any) -> Any:
    """The type of one item (``T`` of ``list[T]``), or None for untyped items."""
    if hint is None or hint is Any:
        return None
    bare = (
        typing.get_args(hint)[0]
        if typing.get_origin(hint) is typing.Annotated
        else hint
    )
    origin = typing.get_origin(bare) or bare
    if origin not in _LIST_ORIGINS:
        raise BatchConfigError(
            f"{where}: its first parameter {name!r} is annotated {hint!r}, "
            "but a batch function receives a list of items: annotate it "
            "list[T] (or Sequence[T]).",
        )
    element = typing.get_args(bare)
    if not element or element[0] is Any:
        return None
    return element[0]


def _is_dependency(param: inspect.Parameter) -> bool:
    if isinstance(param.default, Dependency):
        return True
    metadata = getattr(param.annotation, "__metadata__", ())
    return any(isinstance(meta, Dependency) for meta in metadata)
