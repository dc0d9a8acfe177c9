"""The verdict rules on hand-made arms whose answers are computed here independently: t
statistics from their textbook formulas (scipy.stats.t only for the t distribution), Holm's
adjustment by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bnlab.analysis.verdicts import (
    ALPHA,
    CONTRADICTED,
    INCONCLUSIVE,
    MIN_VALUES,
    NEGLIGIBLE,
    REVERSED,
    SUPPORTED,
    Comparison,
    at_margins,
    counts,
    headline,
    judge,
)

BASE = np.array([0.90, 0.95, 0.85, 0.97, 0.92])  # arm B: seeds that differ a lot
M = 0.005  # the margin of the hand-made comparisons


def _cmp(d, kind="greater", paired=True, margin=M, base=BASE, **setting) -> Comparison:
    """Arm A = arm B + d, seed by seed."""
    a, b = pd.Series(base + d), pd.Series(base)
    return Comparison("x", a, b, margin, kind, paired=paired, setting=setting)


def _paired_t(d, null=0.0):
    d = np.asarray(d, float)
    se = d.std(ddof=1) / math.sqrt(len(d))
    return (d.mean() - null) / se, len(d) - 1, se


def _welch_t(a, b, null=0.0):
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return (a.mean() - b.mean() - null) / math.sqrt(va + vb), df, math.sqrt(va + vb)


def _holm(ps):
    """Holm's step-down adjustment, by hand."""
    order = np.argsort(ps)
    out, running = np.empty(len(ps)), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        out[i] = running
    return out


def test_intervals_and_p_values_match_the_textbook_formulas():
    rng = np.random.default_rng(0)
    a = pd.Series(rng.normal(0.9, 0.01, 5))
    b = pd.Series(rng.normal(0.89, 0.02, 5))
    t, df, se = _paired_t(a - b)
    mean, lo, hi, paired = Comparison("x", a, b, M).diff()
    h = stats.t.ppf(0.975, df) * se
    assert paired and (mean, lo, hi) == pytest.approx(((a - b).mean(), mean - h, mean + h))
    tost = max(stats.t.sf(_paired_t(a - b, -M)[0], df), stats.t.cdf(_paired_t(a - b, M)[0], df))
    p = Comparison("x", a, b, M).pvalues()
    assert p == pytest.approx({">": stats.t.sf(t, df), "<": stats.t.cdf(t, df), "tost": tost})

    b7 = pd.Series(rng.normal(0.88, 0.02, 7), index=range(10, 17))  # Welch
    t, df, se = _welch_t(a, b7)
    mean, lo, hi, paired = Comparison("x", a, b7, M, paired=False).diff()
    h = stats.t.ppf(0.975, df) * se
    assert not paired and (lo, hi) == pytest.approx((mean - h, mean + h))
    tost = max(stats.t.sf(_welch_t(a, b7, -M)[0], df), stats.t.cdf(_welch_t(a, b7, M)[0], df))
    p = Comparison("x", a, b7, M, "equivalent", paired=False).pvalues()
    beyond = stats.t.sf(_welch_t(a, b7, M)[0], df)  # the estimate is positive: A - B > m?
    assert a.mean() > b7.mean() and p == pytest.approx({"tost": tost, "beyond": beyond})

    # ratios: log values; arms without spread have an exact answer
    mean, lo, hi, _ = Comparison("x", a * 3, a, math.log(2), log=True).diff()
    assert mean == lo == hi == pytest.approx(math.log(3))
    (r,) = judge([Comparison("x", a * 3, a, math.log(2), log=True)])
    assert r.verdict == SUPPORTED and r.p == 0.0
    (r,) = judge([Comparison("x", a, a, M, "equivalent")])  # C16 with sigmoid: identical
    assert r.verdict == SUPPORTED and (r.mean, r.lo, r.hi) == (0.0, 0.0, 0.0)


NOISE = np.array([-0.003, 0.003, -0.002, 0.002, 0.0])  # paired differences' spread


@pytest.mark.parametrize(
    "d, kind, expected, test",
    [
        (0.02 + NOISE, "greater", SUPPORTED, ">"),
        (0.006 + NOISE, "greater", SUPPORTED, ">"),  # reaches the margin; CI from 0.0028
        (0.001 + NOISE / 10, "greater", NEGLIGIBLE, "tost"),
        (0.0 + NOISE / 10, "greater", NEGLIGIBLE, "tost"),
        (-0.001 + NOISE / 10, "greater", REVERSED, "tost"),  # A < B, significantly, in the margin
        (-0.02 + NOISE, "greater", CONTRADICTED, "<"),
        (-0.006 + NOISE, "greater", CONTRADICTED, "<"),  # reaches the margin the wrong way
        (-0.004 + NOISE, "greater", INCONCLUSIVE, ">"),  # A < B significant, maybe in the margin
        (0.004 + NOISE, "greater", INCONCLUSIVE, ">"),  # real, maybe below the margin
        (np.array([0.05, -0.05, 0.04, -0.03, 0.0]), "greater", INCONCLUSIVE, ">"),  # noisy
        (0.001 + NOISE / 10, "equivalent", SUPPORTED, "tost"),
        (0.02 + NOISE, "equivalent", CONTRADICTED, "beyond"),
        (-0.02 + NOISE, "equivalent", CONTRADICTED, "beyond"),
        (0.004 + NOISE, "equivalent", INCONCLUSIVE, "tost"),  # may be beyond the margin
    ],
)
def test_each_outcome_on_known_arms(d, kind, expected, test):
    """One comparison (Holm on one p-value changes nothing); every test's p by hand."""
    t, df, se = _paired_t(d)
    p = {
        ">": stats.t.sf(t, df),
        "<": stats.t.cdf(t, df),
        "tost": max(stats.t.sf(_paired_t(d, -M)[0], df), stats.t.cdf(_paired_t(d, M)[0], df)),
        "beyond": stats.t.sf(_paired_t(d, M)[0], df)
        if d.mean() >= 0
        else stats.t.cdf(_paired_t(d, -M)[0], df),
    }
    rejects = {k for k, v in p.items() if v <= ALPHA}
    if expected == REVERSED:
        assert {"<", "tost"} <= rejects  # both hold: a reversal within the margin
    if expected == NEGLIGIBLE:
        assert "<" not in rejects and "tost" in rejects
    if (expected, kind) == (INCONCLUSIVE, "greater") and abs(d.mean()) > 0.003:
        assert ({">", "<"} & rejects) and abs(d.mean()) < M  # significant, short of the margin
        assert "tost" not in rejects
    (r,) = judge([_cmp(d, kind)])
    assert (r.verdict, r.test) == (expected, test)
    assert r.p == pytest.approx(p[test])


def test_holm_within_a_claim_changes_a_verdict():
    border = _cmp(0.01 + np.array([-0.012, 0.012, -0.008, 0.008, 0.0]))
    t, df, _ = _paired_t(border.a - border.b)
    raw = stats.t.sf(t, df)
    assert 0.025 < raw <= ALPHA  # significant alone, not when doubled
    (alone,) = judge([border])
    assert alone.verdict == SUPPORTED and alone.p == pytest.approx(raw)
    twice = judge([border, border])
    assert [r.verdict for r in twice] == [INCONCLUSIVE] * 2
    assert twice[0].p == pytest.approx(2 * raw)
    # step-down: next to a clear effect the borderline one keeps its own level (not Bonferroni)
    clear = _cmp(0.02 + NOISE)
    results = judge([clear, border])
    raws = [stats.t.sf(_paired_t(c.a - c.b)[0], 4) for c in (clear, border)]
    assert [r.p for r in results] == pytest.approx(list(_holm(raws)))
    assert [r.verdict for r in results] == [SUPPORTED, SUPPORTED]
    # a comparison with fewer than 2 values is inconclusive and outside the family
    one = Comparison("x", pd.Series([0.99]), pd.Series([0.9]), M)
    results = judge([border, one])
    assert [(r.verdict, r.test) for r in results] == [(SUPPORTED, ">"), (INCONCLUSIVE, None)]


def test_paired_only_where_declared_and_welch_otherwise():
    d = 0.01 + NOISE / 10  # seeds differ by ~0.05, the per-seed differences by ~0.0003
    (paired,) = judge([_cmp(d)])
    (welch,) = judge([_cmp(d, paired=False)])
    assert paired.verdict == SUPPORTED and welch.verdict == INCONCLUSIVE
    t, df, _ = _welch_t(BASE + d, BASE)
    assert welch.p == pytest.approx(stats.t.sf(t, df)) and not welch.paired
    # paired: the seeds both arms have; an arm's missing seed drops that pair
    a = pd.Series(BASE + d, index=range(5)).drop(4)
    mean, *_ = Comparison("x", a, pd.Series(BASE), M).diff()
    assert mean == pytest.approx(d[:4].mean())
    # arms of two tables are never paired by seed
    a.attrs, b = {"table": "study_dropout.csv"}, pd.Series(BASE)
    b.attrs = {"table": "study_lr.csv"}
    with pytest.raises(ValueError, match="cannot be paired by seed"):
        Comparison("x", a, b, M)
    assert not Comparison("x", a, b, M, paired=False).paired


def test_too_few_values_in_an_arm_is_inconclusive_and_says_why():
    """MIN_VALUES per arm: a clear effect on 2 seeds is not tested; NaN (a collapsed or
    diverged member) gives no value."""
    assert MIN_VALUES == 3
    two = Comparison("x", pd.Series([0.99, 0.98]), pd.Series([0.90, 0.91]), M)
    a = pd.Series([0.99, np.nan, 0.98, np.nan, np.nan])  # three members gave no value
    short = Comparison("x", a, pd.Series(BASE), M)
    (r2, rs) = judge([two, short])
    assert (r2.verdict, r2.test) == (INCONCLUSIVE, None) and "fewer than 3 values" in r2.why
    assert rs.verdict == INCONCLUSIVE and "A 2 of 5, B 5 of 5 members" in rs.why
    three = Comparison("x", pd.Series([0.99, 0.98, 0.985]), pd.Series([0.90, 0.91, 0.905]), M)
    assert judge([three])[0].verdict == SUPPORTED and judge([three])[0].why is None


def test_a_scoped_headline_names_each_outcome_by_its_settings():
    """A directional claim over a learning-rate grid: it holds at the low rates, is absent at
    0.3, reverses at 1 and cannot be told at 3; across two activations, a split on the first
    setting that varies."""
    wild = np.array([0.05, -0.05, 0.04, -0.03, 0.0])
    lrs = {0.01: 0.02 + NOISE, 0.03: 0.02 + NOISE, 0.1: 0.02 + NOISE, 0.3: NOISE / 10,
           1.0: -0.02 + NOISE, 3.0: wild}  # fmt: skip
    cmps = [_cmp(d, lr=lr) for lr, d in lrs.items()]
    results = judge(cmps)
    assert [r.verdict for r in results] == [SUPPORTED] * 3 + [
        NEGLIGIBLE,
        CONTRADICTED,
        INCONCLUSIVE,
    ]
    assert headline(cmps, results) == (
        "holds at lr 0.01-0.1; reverses at lr 1; absent at lr 0.3; undecided at lr 3"
    )
    assert counts(results) == "3 supported, 1 contradicted, 1 negligible, 1 inconclusive"
    # non-contiguous values are listed, two in a row with a comma
    cmps = [_cmp(d, lr=lr) for lr, d in zip(lrs, [0.02 + NOISE, NOISE / 10] * 3)]
    assert headline(cmps, judge(cmps)) == "holds at lr 0.01, 0.1, 1; absent at lr 0.03, 0.3, 3"
    # two settings: the group is named by a split on the first one that varies
    cmps = [
        _cmp(0.02 + NOISE, activation="relu", layer="fc1"),
        _cmp(0.02 + NOISE, activation="relu", layer="fc2"),
        _cmp(-0.001 + NOISE / 10, activation="sigmoid", layer="fc1"),
        _cmp(0.02 + NOISE, activation="sigmoid", layer="fc2"),
    ]
    assert headline(cmps, judge(cmps)) == (
        "holds for relu (every layer), sigmoid (fc2); reversed within the margin for sigmoid "
        "(fc1)"
    )  # relu holds at both layers: said, so that 'sigmoid (fc2)' cannot be read for both
    # all agree: the shared verdict; an equivalence that fails 'fails', not 'reverses'
    same = [_cmp(0.02 + NOISE, lr=lr) for lr in (0.1, 1.0)]
    assert headline(same, judge(same)) == SUPPORTED
    eq = [_cmp(NOISE / 10, "equivalent", act="relu"), _cmp(0.02 + NOISE, "equivalent", act="tanh")]
    assert headline(eq, judge(eq)) == "holds for relu; fails for tanh"


def test_half_and_double_margins_show_a_fragile_verdict():
    """An effect of 0.006 with margin 0.005: supported; at double the margin it is inside it
    (negligible); at half it is still supported. An effect of 0.02 is robust."""
    near = [_cmp(0.006 + NOISE / 3, lr=0.1)]
    assert [r.verdict for r in judge(near)] == [SUPPORTED]
    assert [r.verdict for r in at_margins(near, 0.5)] == [SUPPORTED]
    assert [r.verdict for r in at_margins(near, 2.0)] == [NEGLIGIBLE]
    assert near[0].margin == M  # the comparison itself is not changed
    far = [_cmp(0.02 + NOISE / 3)]
    assert all(r.verdict == SUPPORTED for k in (0.5, 2.0) for r in at_margins(far, k))
