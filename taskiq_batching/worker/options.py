"""The settings of taskiq's Receiver that batched messages honour."""

from dataclasses import dataclass

from taskiq.acks import AcknowledgeType
from taskiq.receiver import Receiver

from taskiq_batching._compat import receiver_settings
from taskiq_batching.core.call import RunOptions


@dataclass(slots=True)
class WorkerOptions:
    """What ``taskiq worker``'s options mean for batched messages.

    :param ack_type: ``--ack-type``, for messages without an ``ack_type`` label.
    :param max_tasks: ``--max-tasks-per-child``: messages (batched or not)
        a process takes before it stops; None for no limit.
    :param wait_tasks_timeout: ``--wait-tasks-timeout``: seconds a stop
        waits for running work; None to wait for all of it.
    :param validate: validate arguments (``--no-parse`` turns it off).
    :param run: how functions run (``--use-process-pool``, errors).
    :param receiver: the Receiver itself, when there is one.
    """

    ack_type: AcknowledgeType = AcknowledgeType.WHEN_SAVED
    max_tasks: int | None = None
    wait_tasks_timeout: float | None = None
    validate: bool = True
    run: RunOptions | None = None
    receiver: Receiver | None = None

    @classmethod
    def of(cls, receiver: Receiver) -> "WorkerOptions":
        """Read a Receiver's settings (``_compat.receiver_settings``).

        :param receiver: the Receiver.
        :return: the options.
        """
        settings = receiver_settings(receiver)
        return cls(
            ack_type=settings.ack_type,
            max_tasks=settings.max_tasks_to_execute or None,
            wait_tasks_timeout=settings.wait_tasks_timeout,
            validate=settings.validate_params,
            run=RunOptions(
                executor=settings.executor,
                propagate_exceptions=settings.propagate_exceptions,
            ),
            receiver=receiver,
        )
