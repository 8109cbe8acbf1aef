"""The perf smoke check's verdict (``bench/smoke.py``): each pair, then the median."""

from bench.smoke import median_ratio


def test_each_batched_drain_is_divided_by_the_plain_one_before_it() -> None:
    rates = {False: [1000.0, 2000.0, 1000.0], True: [9000.0, 10000.0, 30000.0]}
    # Pairs 9, 5, 30: the median is 9, not the ratio of the medians (10).
    assert median_ratio(rates) == 9.0
