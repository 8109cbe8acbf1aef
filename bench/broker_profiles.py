"""Profiles of the batched RabbitMQ and NATS workers, after the suite's rounds.

Each is a drain under the profiler (``broker_runs.profiled_broker_drain``)
whose samples are attributed to their owners (``profile_owners``); the
four-broker table (``broker_report``) prints them.
"""

from bench import profile_owners, suite
from bench.broker_runs import PROFILED, profiled_broker_drain
from bench.suite import Options, Results
from bench.workloads import Env


async def run_profiles(env: Env, opts: Options, results: Results) -> None:
    """Profile the batched worker of each broker whose drains ran.

    ``opts.profile_messages`` messages (0: none); each profile's owners
    (``bench.profile_owners``) go to ``results.brokers[kind]``.
    """
    if not opts.profile_messages:
        return
    for kind, workload in PROFILED.items():
        if workload not in results.runs:
            continue
        out = env.out / f"profile-{kind}"
        suite.log(f"profile: batched {kind} worker, {opts.profile_messages:,} ...")
        try:
            metrics = await profiled_broker_drain(
                env,
                f"prof{kind}",
                opts.profile_messages,
                out,
                broker=kind,
                batched=True,
            )
            owners = profile_owners.owners(out.with_suffix(".pyisession"))
        except Exception as exc:
            results.errors[f"profile-{kind}"] = [repr(exc)]
            suite.log(f"  FAILED: {exc!r}")
            continue
        results.brokers[kind] = {**owners, "rate": metrics["rate"], "prefix": str(out)}
        client = owners["owners"].get(profile_owners.CLIENTS[kind], 0.0)
        suite.log(
            f"  {metrics['rate']:,.0f} msg/s under the profiler; client library "
            f"{client / max(owners['busy'], 1e-9):.1%} of the busy time"
        )
