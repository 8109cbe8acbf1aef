"""The options of ``python -m bench.fleet``."""

import argparse
from pathlib import Path

from bench.fleet_app import BROKERS


def parse(argv: list[str], description: str | None) -> argparse.Namespace:
    """The command line of ``python -m bench.fleet`` (its docstring is the help)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.fleet", description=description
    )
    parser.add_argument("--brokers", default=",".join(BROKERS))
    parser.add_argument("--workers-list", default="1,2,4,8", help="e.g. 1,4")
    parser.add_argument("--rates", default="300", help="msg/s, e.g. 300,2000")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--batch-timeout", type=float, default=0.5)
    parser.add_argument("--slack-ms", type=float, default=50.0)
    parser.add_argument(
        "--paths", default="today,wait", help="today (per-worker buffers), wait"
    )
    parser.add_argument(
        "--drain",
        type=int,
        default=0,
        help="pre-load this many messages before the fleet starts (no --rates "
        "sending); the rate shown is then the drain's: messages / (last - first "
        "batch start)",
    )
    parser.add_argument(
        "--plain-producer",
        action="store_true",
        help="send with taskiq's own kicker (a producer without the plugin: "
        "the wait path's workers forward what they read)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    return parser.parse_args(argv)
