"""The command line of ``bench/fleet_proto.py`` (kept apart: that module's size)."""

import argparse
from pathlib import Path


def arguments(argv: list[str], mechanisms: str, doc: str) -> argparse.Namespace:
    """Parse ``python -m bench.fleet_proto``'s arguments.

    :param mechanisms: the default ``--mechanisms`` (every one).
    :param doc: the command's description.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bench.fleet_proto", description=doc
    )
    parser.add_argument("--mechanisms", default=mechanisms)
    parser.add_argument("--workers-list", default="1,2,4,8")
    parser.add_argument("--rates", default="300,2000")
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--batch-timeout", type=float, default=0.5)
    parser.add_argument("--keys", type=int, default=1)
    parser.add_argument("--drain", type=int, default=0, help="pre-load M messages")
    parser.add_argument("--idle", type=float, default=3.0)
    parser.add_argument(
        "--kill-after", type=float, default=0.0, help="kill -9 a worker after S s"
    )
    parser.add_argument("--slack-ms", type=float, default=50.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    return parser.parse_args(argv)
