"""Each key's fill in ``python -m bench.fleet --keys K`` (issue 18 item 4).

With ``batch_key``, a batch holds one key's messages only, so the fill to
expect of a key is its own: ideal = min(batch_size, key rate *
batch_timeout), the key's rate being its share of the messages times the
rate sent. A key's mean batch is its messages / its batches (Σ 1/size over
its messages, as for the whole run).
"""

from collections import defaultdict
from collections.abc import Sequence


def key_fills(
    records: Sequence[Sequence[float]],
    batch_size: int,
    batch_timeout: float,
    rate: float,
) -> dict[int, float]:
    """Each key's mean batch / its ideal.

    :param records: per message ``[sent, size, start, pid, key]``.
    :param rate: messages per second sent, all keys together.
    :return: fill by key (none for records without a key, key < 0).
    """
    sizes: dict[int, list[float]] = defaultdict(list)
    for record in records:
        if len(record) > 4 and record[4] >= 0:
            sizes[int(record[4])].append(record[1])
    total = sum(len(group) for group in sizes.values())
    fills: dict[int, float] = {}
    for key, group in sizes.items():
        mean = len(group) / sum(1 / size for size in group)
        key_rate = rate * len(group) / total
        ideal = min(float(batch_size), key_rate * batch_timeout)
        fills[key] = mean / ideal if ideal > 0 else 0.0
    return fills


def key_figures(
    records: Sequence[Sequence[float]],
    batch_size: int,
    batch_timeout: float,
    rate: float,
) -> dict[str, float]:
    """The worst key's fill, the keys' mean fill and how many keys ran.

    :param records: per message ``[sent, size, start, pid, key]``.
    :param rate: messages per second sent, all keys together.
    :return: ``key_fill_worst``, ``key_fill_mean``, ``keys_seen`` (none
        without keyed records).
    """
    fills = key_fills(records, batch_size, batch_timeout, rate)
    if not fills:
        return {}
    return {
        "key_fill_worst": min(fills.values()),
        "key_fill_mean": sum(fills.values()) / len(fills),
        "keys_seen": float(len(fills)),
    }
