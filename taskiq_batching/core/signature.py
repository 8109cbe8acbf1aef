"""What a batch function accepts, and a message's arguments checked against it.

A ``BatchSignature`` is built once, when the task is declared
(``analysis.py`` reads the function), so that the worker never inspects
the function again: per message it only checks and converts the item and
the extra arguments (``prepare``), as taskiq does for a plain task.

An argument that does not fit fails its message with an error naming the
argument, the field path and pydantic's error type, never the value (a
secret can be anywhere in it): the value is shown only when the worker
opts in (``BatchingMiddleware(error_values=True)``).
"""

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter
from taskiq_dependencies import DependencyGraph

from taskiq_batching.error_texts import shown, validation_text
from taskiq_batching.errors import (
    BatchArgumentError,
    BatchItemError,
    ListSentAsItemError,
)


class ArgumentError(ValueError):
    """An argument of one message does not fit the batch function."""


class CallError(ArgumentError):
    """The arguments do not match the parameters: Python would refuse the call."""


@dataclass(slots=True)
class BatchSignature:
    """The parts of a batch function's signature the worker needs.

    :param func: the user's batch function.
    :param items_name: name of its first (list) parameter.
    :param item_adapter: validates one item, or None for untyped items.
    :param plain_item: the item type when it is ``int``, ``str``, ``float``
        or ``bool`` (``list[int]``...): an item of exactly that type is
        taken as it is, as pydantic would give it back; else None.
    :param positional: the parameters after the list that take positions.
    :param keywords: the parameters after the list that take names.
    :param adapters: validators of the typed extra parameters, by name.
    :param dependencies: taskiq dependency graph, None when it has no
        dependencies.
    :param is_coroutine: whether the function is ``async``.
    :param takes_more_args: whether it has ``*args``.
    :param takes_more_kwargs: whether it has ``**kwargs``.
    :param names: the names a message may pass as keyword arguments
        (without ``**kwargs``): its extra parameters and dependencies, as a
        message's keyword argument replaces a dependency in taskiq.
    """

    func: Callable[..., Any]
    items_name: str
    item_adapter: TypeAdapter[Any] | None
    plain_item: type | None = None
    positional: list[inspect.Parameter] = field(default_factory=list)
    keywords: list[inspect.Parameter] = field(default_factory=list)
    adapters: dict[str, TypeAdapter[Any]] = field(default_factory=dict)
    dependencies: DependencyGraph | None = None
    is_coroutine: bool = True
    takes_more_args: bool = False
    takes_more_kwargs: bool = False
    names: frozenset[str] = frozenset()

    def prepare(
        self,
        task_name: str,
        task_id: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        validate: bool = True,
        values: bool = False,
    ) -> tuple[Any, list[Any], dict[str, Any]]:
        """A message's item and extra arguments, validated as taskiq would.

        :param task_name: the batched task, for errors.
        :param task_id: the message, for errors.
        :param args: its positional arguments, the item first.
        :param kwargs: its keyword arguments.
        :param validate: validate them (taskiq's ``--no-parse`` turns it off).
        :param values: show the values that do not fit in errors.
        :raises BatchArgumentError: when the arguments do not match the
            function's parameters (as calling it would raise ``TypeError``).
        :raises BatchItemError: when this message's arguments do not fit.
        :return: the item, the extra positional and keyword arguments.
        """
        if not args:
            raise BatchItemError(
                task_name,
                task_id,
                "no item: send one item per message, as `await task.kiq(item)`",
            )
        try:
            if len(args) > 1 or kwargs:  # an item alone fits any batch function
                self.check_call(len(args) - 1, kwargs)
            if not validate:
                return args[0], list(args[1:]), dict(kwargs)
            item = args[0]
            if type(item) is not self.plain_item:  # else: as pydantic gives it
                item = self.coerce_item(item, values)
            if len(args) == 1 and not kwargs and not self.keywords:
                return item, [], {}  # nothing to move, convert or default
            extra_args, extra_kwargs = self.coerce_extras(args[1:], kwargs, values)
        except CallError as exc:
            raise BatchArgumentError(task_name, task_id, str(exc)) from None
        except ArgumentError as exc:
            raise BatchItemError(task_name, task_id, str(exc)) from None
        return item, extra_args, extra_kwargs

    def check_one_item(self, task_name: str, item: Any) -> None:
        """Refuse, before sending, a list of items sent as one item.

        Only when the item type is known, the value is a list or tuple
        that is not an item itself, and it is empty or its first element
        is an item: ``kiq([row1, row2])`` for ``list[Row]``. Anything else
        (an untyped item, a wrong item) is left to the worker's validation.

        :param task_name: the batched task, for the error.
        :param item: what ``kiq`` was given as the item.
        :raises ListSentAsItemError: when it is a list of items.
        """
        adapter = self.item_adapter
        if adapter is None or not isinstance(item, (list, tuple)):
            return
        if _fits(adapter, item) or (item and not _fits(adapter, item[0])):
            return
        raise ListSentAsItemError(task_name, type(item).__name__, len(item))

    def check_call(self, extra: int, kwargs: Mapping[str, Any]) -> None:
        """Refuse what calling the function would refuse (``TypeError``).

        :param extra: positional arguments after the item.
        :param kwargs: keyword arguments of the message.
        :raises CallError: on an unknown keyword argument, or too many
            positional arguments.
        """
        if extra > len(self.positional) and not self.takes_more_args:
            raise CallError(
                f"takes {len(self.positional)} argument(s) after the item, got {extra}",
            )
        if self.takes_more_kwargs:
            return
        for name in kwargs:
            if name not in self.names:
                raise CallError(f"got an unexpected keyword argument {shown(name)}")

    def coerce_item(self, item: Any, values: bool = False) -> Any:
        """Validate and convert one item, as taskiq does for an argument.

        :param item: the item as decoded from the message.
        :param values: show the item in the error.
        :raises ArgumentError: when the item does not fit the element type.
        :return: the converted item.
        """
        if self.item_adapter is None:
            return item
        try:
            # ``TypeAdapter.validate_python(item)``, without its Python frame
            # (it passes its defaults on to the same validator).
            return self.item_adapter.validator.validate_python(item)
        except Exception as exc:
            what = f"item {shown(item)}" if values else "item"
            errors = validation_text(exc, values)
            raise ArgumentError(
                f"{what} does not fit {self.items_name}: {errors}"
            ) from None

    def coerce_extras(
        self,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        values: bool = False,
    ) -> tuple[list[Any], dict[str, Any]]:
        """Validate the arguments that follow the item, in a canonical form.

        Arguments given by position are moved to their names and unset
        parameters take their defaults, so that ``kiq(x, "a")`` and
        ``kiq(y, tenant="a")`` are seen as the same arguments.

        :param args: positional arguments after the item.
        :param kwargs: keyword arguments of the message.
        :param values: show the values that do not fit in errors.
        :raises ArgumentError: when one does not fit its parameter.
        :return: the converted positional and keyword arguments.
        """
        new_args: list[Any] = []
        new_kwargs = dict(kwargs)
        for index, value in enumerate(args):
            if index >= len(self.positional):
                if not self.takes_more_args:
                    raise CallError(
                        f"takes {len(self.positional)} argument(s) after the item, "
                        f"got {len(args)}",
                    )
                new_args.append(value)  # taken by *args
                continue
            param = self.positional[index]
            if param.kind == inspect.Parameter.POSITIONAL_ONLY:
                new_args.append(self._coerce(param.name, value, values))
            elif param.name in new_kwargs:
                raise CallError(f"got multiple values for {param.name!r}")
            else:
                new_kwargs[param.name] = value
        for param in self.keywords:
            if param.name not in new_kwargs and param.default is not param.empty:
                new_kwargs[param.name] = param.default
        for name, value in new_kwargs.items():
            new_kwargs[name] = self._coerce(name, value, values)
        return new_args, new_kwargs

    def _coerce(self, name: str, value: Any, values: bool) -> Any:
        adapter = self.adapters.get(name)
        if adapter is None:
            return value
        try:
            return adapter.validate_python(value)
        except Exception as exc:
            what = f"argument {name!r}"
            if values:
                what += f"={shown(value)}"
            raise ArgumentError(
                f"{what} is invalid: {validation_text(exc, values)}"
            ) from None


def _fits(adapter: TypeAdapter[Any], value: Any) -> bool:
    try:
        adapter.validate_python(value)
    except Exception:  # a validator may raise anything: then it does not fit
        return False
    return True
