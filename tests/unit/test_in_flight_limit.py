"""The sink's in-flight limit: halved on timeouts, raised back step by step on success."""

from streaming.sink import InFlightLimit


def test_timeouts_halve_the_limit_down_to_one() -> None:
    limit = InFlightLimit(42)
    assert limit.value == 42
    seen = []
    while limit.overloaded():
        seen.append(limit.value)
    assert seen == [21, 10, 5, 2, 1]
    assert limit.value == 1


def test_successes_raise_it_back_by_an_eighth_of_the_maximum_never_above() -> None:
    limit = InFlightLimit(40)
    for _ in range(6):
        limit.overloaded()
    steps = []
    for _ in range(10):
        limit.succeeded()
        steps.append(limit.value)
    assert steps == [6, 11, 16, 21, 26, 31, 36, 40, 40, 40]


def test_a_limit_of_one_still_moves_by_one() -> None:
    limit = InFlightLimit(1)
    assert limit.overloaded() is False
    limit.succeeded()
    assert limit.value == 1
