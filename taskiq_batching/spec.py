"""A batched task as a worker knows it: its name, settings and batch function.

Built once, when the task is declared (``tasks.py``); read by the
batcher, the lifecycle and the transports (which check their broker's
redelivery window against a task's settings).
"""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from taskiq_batching.settings import BatchSettings

if TYPE_CHECKING:
    # Only its type: a transport reading a spec imports nothing of core/.
    from taskiq_batching.core.signature import BatchSignature


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """Everything a worker needs to batch one task.

    :param task_name: the task's name.
    :param settings: its batch settings.
    :param signature: the batch function and how to call it.
    :param timeout: its ``timeout`` label in seconds: limits each call of
        the batch function.
    """

    task_name: str
    settings: BatchSettings
    signature: "BatchSignature"
    timeout: float | None
    #: Its messages are filtered, keyed or costed (``policies.py``); read
    #: per message, so computed once.
    has_policies: bool = field(init=False)

    def __post_init__(self) -> None:
        settings = self.settings
        policies = (settings.where, settings.key, settings.cost)
        object.__setattr__(self, "has_policies", any(p is not None for p in policies))
