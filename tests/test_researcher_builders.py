"""Builders fail at once, with what to give, on incomplete arguments (issue 13)."""
from __future__ import annotations

import pytest

from researcher import jobs
from shared.jobs import SpecError


@pytest.mark.parametrize("bounds", [None, (0,), "0-10", 5])
def test_statistics_without_usable_bounds_says_what_to_give(bounds):
    s = jobs.Statistics("bc", delta=0.0)
    for add in (lambda: s.mean("age", bounds, epsilon=0.5),
                lambda: s.sum("age", bounds, epsilon=0.5),
                lambda: s.quantile("age", [0.5], bounds, epsilon=0.5)):
        with pytest.raises(SpecError, match=r"give bounds=\(lower, upper\) for 'age'"):
            add()
    assert s.spec.queries == []  # nothing half added


def test_statistics_with_bounds_still_builds():
    s = jobs.Statistics("bc", delta=0.0).mean("age", (0, 120), epsilon=0.5)
    assert s.spec.queries[0]["bounds"] == [0, 120]
