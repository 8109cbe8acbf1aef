"""Send rows to the worker of ``examples.app``: ``python -m examples.producer``.

Used by docker-compose.yml; needs ``REDIS_URL``. Sends ``--count`` rows
at ``--rate`` rows per second and reports each result it gets back.
"""

import argparse
import asyncio
import os
from collections import Counter

from examples.app import Row, broker, insert_rows


async def produce(count: int, rate: float) -> Counter[int]:
    """Send the rows, then wait for every result; count results by value."""
    await broker.startup()
    tasks = []
    for i in range(count):
        tasks.append(await insert_rows.kiq(Row(id=i, name=f"row-{i}")))
        if rate > 0:
            await asyncio.sleep(1 / rate)  # pacing the load, not waiting for work
    results = Counter(
        [(await task.wait_result(timeout=60)).return_value for task in tasks],
    )
    await broker.shutdown()
    return results


def main() -> None:
    """Parse the arguments and send."""
    if "REDIS_URL" not in os.environ:
        raise SystemExit("set REDIS_URL (the worker must use the same Redis)")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0, help="rows/s; 0: no pause")
    args = parser.parse_args()
    results = asyncio.run(produce(args.count, args.rate))
    print(f"{args.count} results, by batch size: {dict(sorted(results.items()))}")


if __name__ == "__main__":
    main()
