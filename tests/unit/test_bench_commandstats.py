"""The benchmark's Redis command time per message (bench/commandstats.py)."""

import pytest

from bench import commandstats
from bench.commandstats import Counter, parse, per_message


def stats(**commands: tuple[int, int]) -> dict[str, dict[str, float]]:
    """``INFO commandstats`` as redis-py parses it."""
    return {
        f"cmdstat_{name}": {"calls": calls, "usec": usec, "usec_per_call": 1.0}
        for name, (calls, usec) in commands.items()
    }


def test_info_is_read_into_counters_by_command() -> None:
    parsed = parse(
        {
            **stats(xreadgroup=(3, 30), XACK=(1, 2)),
            "cmdstat_xinfo|groups": {"calls": 5, "usec": 9},
            "errorstat_ERR": {"count": 1},
        }
    )
    assert parsed == {
        "xreadgroup": Counter(3, 30),
        "xack": Counter(1, 2),
        "xinfo|groups": Counter(5, 9),
    }


def test_per_message_figures_are_deltas_over_the_messages() -> None:
    before = parse(stats(xreadgroup=(10, 100), set=(5, 20), info=(1, 10)))
    after = parse(
        stats(
            xreadgroup=(12, 400),  # 2 reads of 100 entries: 300 µs
            set=(205, 620),  # 200 results: 600 µs
            xack=(2, 210),
            info=(40, 900),  # the benchmark's own: left out
            ping=(1, 1),
        )
    )
    figures = per_message(before, after, 200)
    assert figures == pytest.approx(
        {
            "redis_usec": 1.5 + 3.0 + 1.05,
            "redis_usec:set": 3.0,
            "redis_calls:set": 1.0,
            "redis_usec:xack": 1.05,
            "redis_calls:xack": 0.01,
            "redis_usec:xreadgroup": 1.5,
            "redis_calls:xreadgroup": 0.01,
        }
    )
    assert commandstats.commands(figures) == pytest.approx(
        {"set": 3.0, "xack": 1.05, "xreadgroup": 1.5}
    )


def test_commands_run_by_scripts_are_counted_once_in_the_total() -> None:
    # Redis counts a script's SET and XREADGROUP under their names and in
    # EVALSHA's time: the total takes EVALSHA, and them not again.
    after = parse(stats(evalsha=(4, 1600), xreadgroup=(2, 300), set=(200, 600)))
    figures = per_message({}, after, 200)
    assert figures["redis_usec"] == pytest.approx(8.0)
    assert figures["redis_usec:set"] == pytest.approx(3.0)  # still listed
    assert figures["redis_nested:set"] == figures["redis_nested:xreadgroup"] == 1
    # Without a script, the same commands are the total.
    plain = per_message({}, parse(stats(xreadgroup=(2, 300), set=(200, 600))), 200)
    assert plain["redis_usec"] == pytest.approx(4.5)
    assert not [key for key in plain if key.startswith("redis_nested")]


def test_a_short_script_beside_top_level_commands_does_not_hide_them() -> None:
    # Plain taskiq: a lock's scripts (1 µs) beside a SET per result.
    after = parse(stats(evalsha=(2, 200), xreadgroup=(2, 300), set=(200, 600)))
    figures = per_message({}, after, 200)
    assert figures["redis_usec"] == pytest.approx(1.0 + 1.5 + 3.0)
    # A script long enough for the read but not the results: the read is its.
    after = parse(stats(evalsha=(2, 400), xreadgroup=(2, 300), set=(200, 600)))
    assert per_message({}, after, 200)["redis_usec"] == pytest.approx(2.0 + 3.0)


def test_a_transactions_commands_are_counted_not_its_exec() -> None:
    after = parse(stats(multi=(1, 1), exec=(1, 50), lpush=(1, 20), sadd=(1, 20)))
    assert per_message({}, after, 10)["redis_usec"] == pytest.approx(4.0)


def test_no_messages_is_an_error() -> None:
    with pytest.raises(ValueError, match="positive"):
        per_message({}, {}, 0)


def test_the_report_lists_each_workloads_commands_marking_nested_ones() -> None:
    scripted = per_message({}, parse(stats(evalsha=(4, 1600), set=(200, 600))), 200)
    plain = per_message({}, parse(stats(set=(200, 600), xack=(2, 200))), 200)
    lines = commandstats.markdown(
        {"old": [scripted, None], "new": [plain, plain], "failed": [None]}
    )
    table = "\n".join(lines)
    assert "| old | 8.00 | EVALSHA 8.00 (2), SET* 3.00 (100) |" in table
    assert "| new | 4.00 (4.00\u20134.00) | SET 3.00 (100), XACK 1.00 (1) |" in table
    assert "failed" not in table
    assert commandstats.markdown({"failed": [None]}) == []
