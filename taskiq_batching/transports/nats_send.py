"""Sending a batched task's messages straight to where they wait on NATS JetStream.

With ``BatchingMiddleware(wait_in_broker=True)``, a producer with the
plugin (``kiq``, ``kiq_many``: ``waiting.py``) publishes a batched task's
messages to the task's own subject (``<subject>.batch.<token>``, stream
``<stream>-batch``), where a worker's lease reads them (``nats_lease.py``).
Only what a plain taskiq kicker put on the main subject is moved there by
a worker (``nats_forward.py``), at the cost of one more publish and
delivery per message. The message bytes are what taskiq-nats's ``kick``
would publish, its headers only what the lease reads (``lease_headers``:
most messages have none, and reach the lease raw); every publish waits
for the stream's acknowledgement (a message acked is stored: at-least-once), and
its send time is the stream's timestamp, which the lease reads.

``kiq_many`` publishes each message with ``Nats-Msg-Id`` = its task_id:
within the server's duplicate window (2 min by default) a message sent
again is stored once, and a failure says which messages surely were not
sent (``SendManyError``).
"""

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

from nats.js.api import RetentionPolicy
from nats.js.errors import APIError, BadRequestError, NoStreamResponseError
from taskiq import BrokerMessage

from taskiq_batching.core.broker_keys import NO_KEY
from taskiq_batching.error_texts import describe
from taskiq_batching.errors import SendManyError
from taskiq_batching.labels import BATCH_DEADLINE_LABEL
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.batch_source import per_worker_reason
from taskiq_batching.transports.nats_lease_keys import KEY_HEADER

#: Messages published at once by ``kiq_many`` (each waits for its ack).
SEND_CONCURRENCY = 500
#: The server's error code for a stream that exists with another config.
STREAM_EXISTS = 10058
#: ``Nats-Msg-Id`` prefix of a producer's messages (task ids are unique).
MSG_ID_PREFIX = "tb-"


def task_token(task_name: str) -> str:
    """A subject token and durable suffix for a task name (any characters)."""
    return hashlib.sha1(task_name.encode()).hexdigest()[:16]


def batch_stream(broker: Any) -> str:
    """The stream batched tasks' messages wait on."""
    return f"{broker.stream_name}-batch"


def batch_subject(broker: Any, task_name: str) -> str:
    """The subject a batched task's messages wait on."""
    return f"{broker.subject}.batch.{task_token(task_name)}"


async def ensure_batch_stream(broker: Any) -> str:
    """Create the batch stream if it is missing (workers and producers alike).

    A work queue: an acked message is gone (nothing piles up); each task's
    durable filters a subject of its own, as that asks.

    :param broker: taskiq-nats's JetStream broker, started.
    :return: the stream's name.
    """
    name = batch_stream(broker)
    try:
        await broker.js.add_stream(
            name=name,
            subjects=[f"{broker.subject}.batch.>"],
            retention=RetentionPolicy.WORK_QUEUE,
        )
    except BadRequestError as exc:
        # Made by a newer or older plugin with other settings: used as it is.
        if exc.err_code != STREAM_EXISTS:
            raise
    return name


class NatsBatchSender:
    """Publishes batched tasks' messages to their own subjects (a producer's side).

    :param broker: taskiq-nats's ``PullBasedJetStreamBroker``.
    """

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self._stream_ready = False
        self._lock = asyncio.Lock()  # concurrent first sends make it once

    def serves(self, spec: BatchSpec) -> bool:
        """Whether a batched task waits in the broker (not when ``per_worker_reason``).

        :param spec: the task.
        :return: False for a task each worker buffers (sent the plain way).
        """
        return per_worker_reason(spec) is None

    async def send(
        self,
        spec: BatchSpec,
        messages: Sequence[BrokerMessage],
        keys: Sequence[str],
        once: bool,
    ) -> None:
        """Publish one task's messages to its subject, each acked by the stream.

        :param spec: the batched task.
        :param messages: its messages, in order.
        :param keys: each message's key (a header: the lease keeps keys apart).
        :param once: ``kiq_many``: each with ``Nats-Msg-Id``, at most once.
        :raises SendManyError: (``once``) some messages were not sent.
        """
        if not self._stream_ready:
            async with self._lock:
                if not self._stream_ready:
                    await ensure_batch_stream(self.broker)
                    self._stream_ready = True
        subject = batch_subject(self.broker, spec.task_name)
        if not once:
            for message, key in zip(messages, keys, strict=True):
                await self._publish(subject, message, key, once)
            return
        failed: list[tuple[int, BaseException]] = []
        for start in range(0, len(messages), SEND_CONCURRENCY):
            chunk = zip(
                messages[start : start + SEND_CONCURRENCY],
                keys[start : start + SEND_CONCURRENCY],
                strict=True,
            )
            outcomes = await asyncio.gather(
                *(self._publish(subject, message, key, once) for message, key in chunk),
                return_exceptions=True,
            )
            failed += [
                (start + index, outcome)
                for index, outcome in enumerate(outcomes)
                if isinstance(outcome, BaseException)
            ]
        if failed:
            _report(messages, failed)

    async def _publish(
        self, subject: str, message: BrokerMessage, key: str, once: bool
    ) -> None:
        """One publish as ``kick`` makes it; a lost stream is made again once."""
        headers = lease_headers(message, key)
        if once:
            headers["Nats-Msg-Id"] = MSG_ID_PREFIX + message.task_id
        # None, not {}: an empty dict still sends a header block (HPUB).
        sent = headers or None
        try:
            await self.broker.js.publish(subject, message.message, headers=sent)
        except NoStreamResponseError:
            # Nothing stored (no stream listens): deleted since; safe to retry.
            await ensure_batch_stream(self.broker)
            await self.broker.js.publish(subject, message.message, headers=sent)


def lease_headers(message: BrokerMessage, key: str) -> dict[str, str]:
    """The headers a lease reads of a message: none for most.

    Its key (``Tb-Key``, unless ``NO_KEY``) and ``batch_deadline``; its
    labels stay in its bytes, where the worker reads them. A message with
    no header reaches the lease raw, no ``Msg`` built (``nats_lease.py``).

    :param message: the message.
    :param key: its key in the broker.
    :return: the headers (empty: the message is published without).
    """
    headers: dict[str, str] = {}
    if key != NO_KEY:
        headers[KEY_HEADER] = key
    deadline = message.labels.get(BATCH_DEADLINE_LABEL)
    if deadline is not None:
        headers[BATCH_DEADLINE_LABEL] = str(deadline)
    return headers


def _report(
    messages: Sequence[BrokerMessage], failed: list[tuple[int, BaseException]]
) -> None:
    """Raise ``SendManyError``: refused by the server (not sent) or unknown."""
    refused = (APIError, NoStreamResponseError)  # the server stored nothing
    not_sent = [i for i, exc in failed if isinstance(exc, refused)]
    unknown = [i for i, exc in failed if not isinstance(exc, refused)]
    raise SendManyError(
        describe(failed[0][1]),
        [message.task_id for message in messages],
        not_sent,
        unknown,
    ) from failed[0][1]
