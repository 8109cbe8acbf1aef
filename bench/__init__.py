"""Benchmark suite of taskiq-batching: ``python -m bench`` (see docs/benchmarks.md).

Every workload runs real processes (``taskiq worker``, ``celery worker``, a
plain redis-py consumer) against the machine's Redis and PostgreSQL on
loopback, side by side in one run, so that ratios measured in the same run
are comparable.
"""
