"""Turns on ``NatsTransport(wait_in_broker=True)`` in ``bench.fleet``'s workers.

Until ``BatchingMiddleware(wait_in_broker=True)`` reaches the transport
registry (another branch), ``bench.fleet`` has no switch for it. Python
imports ``sitecustomize`` at start from ``PYTHONPATH``, so::

    TB_NATS_WAIT_IN_BROKER=1 PYTHONPATH=bench/fleet_proto_nats_switch \\
        python -m bench.fleet --brokers nats ...

runs every worker process with the switch on (docs/fleet.md, "NATS").
"""

import functools
import os

if os.environ.get("TB_NATS_WAIT_IN_BROKER"):
    from taskiq_batching.transports import nats as _nats

    _nats.transport_for = functools.partial(_nats.transport_for, wait_in_broker=True)
