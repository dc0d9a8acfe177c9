"""The verdict rules on known answers, and the intervals against scipy."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bnlab.verdicts import (
    INCONCLUSIVE,
    MIXED,
    NOT_SUPPORTED,
    SUPPORTED,
    Comparison,
    combine,
    verdict,
)


@pytest.mark.parametrize(
    "mean, lo, hi, margin, kind, expected",
    [
        (0.02, 0.01, 0.03, 0.005, "greater", SUPPORTED),
        (0.004, 0.001, 0.007, 0.005, "greater", INCONCLUSIVE),  # real but maybe too small
        (0.002, 0.001, 0.003, 0.005, "greater", NOT_SUPPORTED),  # reliably below the margin
        (-0.02, -0.03, -0.01, 0.005, "greater", NOT_SUPPORTED),  # the opposite holds
        (0.01, -0.01, 0.03, 0.005, "greater", INCONCLUSIVE),  # seeds too noisy
        (0.001, -0.003, 0.004, 0.005, "equivalent", SUPPORTED),
        (0.02, 0.01, 0.03, 0.005, "equivalent", NOT_SUPPORTED),
        (0.004, -0.002, 0.01, 0.005, "equivalent", INCONCLUSIVE),
    ],
)
def test_verdict_known_answers(mean, lo, hi, margin, kind, expected):
    assert verdict(mean, lo, hi, margin, kind) == expected


def test_combine():
    assert combine([SUPPORTED, SUPPORTED]) == SUPPORTED
    assert combine([SUPPORTED, NOT_SUPPORTED]) == MIXED
    assert combine([SUPPORTED, INCONCLUSIVE]) == MIXED
    assert combine([]) == INCONCLUSIVE


def test_intervals_match_scipy():
    rng = np.random.default_rng(0)
    a = pd.Series(rng.normal(0.9, 0.01, 5), index=range(5))
    b = pd.Series(rng.normal(0.88, 0.02, 5), index=range(5))
    mean, lo, hi, paired = Comparison("x", a, b, 0.005).diff()
    ci = stats.ttest_rel(a, b).confidence_interval()
    assert paired and (lo, hi) == pytest.approx((ci.low, ci.high))
    assert mean == pytest.approx((a - b).mean())
    b7 = pd.Series(rng.normal(0.88, 0.02, 7), index=range(10, 17))  # other seeds: Welch
    mean, lo, hi, paired = Comparison("x", a, b7, 0.005).diff()
    ci = stats.ttest_ind(a, b7, equal_var=False).confidence_interval()
    assert not paired and (lo, hi) == pytest.approx((ci.low, ci.high))
    mean, lo, hi, _ = Comparison("x", a * 3, a, 0.1, log=True).diff()  # ratios: log scale
    assert mean == pytest.approx(math.log(3)) and lo == hi == pytest.approx(math.log(3))
