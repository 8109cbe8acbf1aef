"""nats-py's internals (the NATS JetStream transport).

Tested with nats-py 2.16 here; ``.ci/matrix``'s lowest rows run the same
tests on nats-py 2.3 (``pyproject.toml`` bounds: ``nats-py>=2.3,<3``).
"""

from collections.abc import Sequence
from typing import Any


def nats_pull_subject(subscription: Any) -> str:
    """The subject a JetStream pull subscription sends its pull requests to.

    The worker sends its own requests there, to the durable taskiq-nats
    created.

    Relies on: ``JetStreamContext.pull_subscribe`` keeping that subject
    (``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>``, under the context's
    API prefix or domain) on the subscription as ``_nms``.

    :param subscription: a ``JetStreamContext.PullSubscription``.
    :return: the subject.
    """
    return str(subscription._nms)


async def nats_publish_each(
    client: Any, subjects: Sequence[str], payload: bytes
) -> bool:
    """Publish one small payload to many subjects, handed to the client at once.

    For the acks of a batch (``+ACK`` to each message's reply subject),
    the commands are built here and handed over in one call, counted in
    ``stats`` as ``publish`` counts them.

    Relies on: ``Client.publish`` building one ``PUB`` command per call
    and passing it to the private ``Client._send_command``, which appends
    it to the buffer its flusher writes (``flush`` writes it too); and on
    the ``out_msgs``/``out_bytes`` counters of ``Client.stats``.

    :param client: a connected ``nats.aio.client.Client``.
    :param subjects: where to publish (reply subjects the server gave).
    :param payload: what to publish to each.
    :return: False when that is not possible (not connected, another
        client): then publish each.
    """
    send = getattr(client, "_send_command", None)
    if send is None or not client.is_connected or not subjects:
        return False
    size = len(payload)
    head = b" %d\r\n%s\r\n" % (size, payload)
    await send(b"".join(b"PUB " + subject.encode() + head for subject in subjects))
    client.stats["out_msgs"] += len(subjects)
    client.stats["out_bytes"] += size * len(subjects)
    return True
