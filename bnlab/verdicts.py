"""Verdicts on comparisons of two arms (sets of values, one per seed), independent of the
tables and of the claims that use them (bnlab.claims). The rules, in words, are RULES.

Each comparison is tested with scipy's t-tests: paired by seed (ttest_rel) when both arms come
from one sweep table, whose members of a seed start from the same weights, Welch's
(ttest_ind, equal_var=False) otherwise; equivalence within the margin with statsmodels' TOST.
Within a claim, each test's p-values are adjusted across the claim's comparisons
(multipletests, method CORRECTION); a test rejects at an adjusted p <= ALPHA.
"""

from __future__ import annotations

import gc
import math
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_ind, ttost_paired

ALPHA = 0.05  # each test's level, after the correction; intervals are (1 - ALPHA)
CORRECTION = "holm"  # statsmodels multipletests method, within each claim

SUPPORTED, NEGLIGIBLE, CONTRADICTED, INCONCLUSIVE, MIXED = (
    "supported",
    "negligible",
    "contradicted",
    "inconclusive",
    "mixed",
)

# the tests by key, named by what they show when they reject (for the report)
TESTS = {">": "A > B", "<": "A < B", "tost": "within margin (TOST)", "beyond": "beyond margin"}

RULES = f"""\
Each comparison tests arm A against arm B with a t-test on the values of their seeds: paired \
by seed when both arms come from one sweep table (a seed's members start from the same \
weights), Welch's otherwise; quantities compared as ratios are tested on the log scale. \
Within each claim, each test's p-values are adjusted across the claim's comparisons \
({CORRECTION.capitalize()}), and a test rejects at an adjusted p <= {ALPHA:g}. A comparison \
"A > B" with margin m (the smallest effect that matters) is *supported* when the one-sided \
test of A > B rejects and the mean difference is at least m (its interval may reach below m); \
*negligible* when the equivalence test (TOST) shows |A - B| < m, whatever the sign; \
*contradicted* when the one-sided test of A < B rejects and the effect is not negligible; \
*inconclusive* otherwise (the seeds spread too much to tell, or a real effect may be below \
the margin). A comparison "A ~ B" within m is *supported* when TOST shows |A - B| < m, \
*contradicted* when a one-sided test (in the direction of the estimate) shows A - B beyond \
+-m, *inconclusive* otherwise. An arm with fewer than 2 values makes its comparison \
inconclusive. A claim is *mixed* when some of its comparisons are supported and others \
contradicted; otherwise it takes the verdict all its comparisons share, or says how many \
were supported, contradicted or negligible and what the rest were, e.g. "supported in 3 of 5 \
(the rest inconclusive)"."""


@dataclass
class Comparison:
    """Arm a vs arm b on one measure; claim: a > b (kind 'greater') or a ~ b ('equivalent')."""

    label: str
    a: pd.Series  # values indexed by seed
    b: pd.Series
    margin: float
    kind: str = "greater"
    log: bool = False  # compare log values (ratios) instead of differences
    paired: bool = True  # both arms from one sweep table: a seed's members share initial weights

    def __post_init__(self):
        ta, tb = self.a.attrs.get("table"), self.b.attrs.get("table")  # set by claims.arm
        if self.paired and ta and tb and ta != tb:
            raise ValueError(f"{self.label}: arms of {ta} and {tb} cannot be paired by seed")

    def values(self) -> tuple[np.ndarray, np.ndarray]:
        """Both arms' values (logs if self.log), without NaN; paired: the seeds both have."""
        a, b = self.a.dropna().astype(float), self.b.dropna().astype(float)
        if self.paired:
            a, b = a.align(b, join="inner")
        a, b = a.to_numpy(), b.to_numpy()
        return (np.log(a.clip(1e-300)), np.log(b.clip(1e-300))) if self.log else (a, b)

    def _ttest(self, a, b, alternative="two-sided", shift=0.0):
        """scipy's t-test of a - b against `shift` (paired or Welch)."""
        with warnings.catch_warnings():  # arms without spread: p is 0, 1 or NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            if self.paired:
                return stats.ttest_rel(a, b + shift, alternative=alternative)
            return stats.ttest_ind(a, b + shift, equal_var=False, alternative=alternative)

    def diff(self) -> tuple[float, float, float, bool]:
        """Mean difference a - b (of logs if self.log), its unadjusted (1 - ALPHA) interval,
        and whether it is paired; NaN, -inf, inf with fewer than 2 values in an arm."""
        a, b = self.values()
        if len(a) < 2 or len(b) < 2:
            return math.nan, -math.inf, math.inf, self.paired
        mean = float((a - b).mean() if self.paired else a.mean() - b.mean())
        ci = self._ttest(a, b).confidence_interval(1 - ALPHA)
        lo, hi = (mean if math.isnan(x) else float(x) for x in ci)  # NaN: no spread
        return mean, lo, hi, self.paired

    def pvalues(self) -> dict[str, float]:
        """Unadjusted p-values by test (TESTS); none with fewer than 2 values in an arm."""
        a, b = self.values()
        if len(a) < 2 or len(b) < 2:
            return {}
        m = self.margin
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if self.paired:
                tost = ttost_paired(a, b, -m, m)[0]
            else:
                tost = ttost_ind(a, b, -m, m, usevar="unequal")[0]
        p = {"tost": tost}
        if self.kind == "equivalent":
            up = self._ttest(a, b, "greater", m).pvalue
            down = self._ttest(a, b, "less", -m).pvalue
            p["beyond"] = up if a.mean() - b.mean() >= 0 else down
        else:
            p[">"], p["<"] = self._ttest(a, b, "greater").pvalue, self._ttest(a, b, "less").pvalue
        return {k: 1.0 if math.isnan(v) else float(v) for k, v in p.items()}  # NaN: no effect


@dataclass
class Result:
    """A comparison's verdict, its estimate and the adjusted p-value of the deciding test."""

    verdict: str
    mean: float
    lo: float
    hi: float
    paired: bool
    test: str | None = None  # a key of TESTS; None if untested
    p: float = math.nan  # that test's adjusted p-value


def judge(comparisons: list[Comparison]) -> list[Result]:
    """The verdicts of one claim's comparisons: each test's p-values adjusted across them."""
    raw = [c.pvalues() for c in comparisons]
    adjusted: list[dict[str, float]] = [{} for _ in comparisons]
    for test in TESTS:
        tested = [i for i, p in enumerate(raw) if test in p]
        if tested:
            ps = _adjust([raw[i][test] for i in tested])
            for i, p in zip(tested, ps):
                adjusted[i][test] = float(p)
    return [_decide(c, p) for c, p in zip(comparisons, adjusted)]


def _adjust(ps: list[float]) -> np.ndarray:
    """statsmodels' adjusted p-values (method CORRECTION). Its Holm calls gc.collect(), which
    takes 0.1 s in a process holding torch: the objects that exist are frozen out of it."""
    gc.freeze()
    try:
        return multipletests(ps, ALPHA, CORRECTION)[1]
    finally:
        gc.unfreeze()


def _decide(c: Comparison, p: dict[str, float]) -> Result:
    """One comparison's verdict from its adjusted p-values (RULES)."""
    mean, lo, hi, paired = c.diff()
    if not p:
        return Result(INCONCLUSIVE, mean, lo, hi, paired)
    if c.kind == "equivalent":
        rules = [(SUPPORTED, "tost"), (CONTRADICTED, "beyond")]
    else:
        rules = [(NEGLIGIBLE, "tost"), (CONTRADICTED, "<")]
        if mean >= c.margin:  # supported: significant and reaching the margin
            rules.insert(0, (SUPPORTED, ">"))
    for verdict, test in rules:
        if p[test] <= ALPHA:
            return Result(verdict, mean, lo, hi, paired, test, p[test])
    test = "tost" if c.kind == "equivalent" else ">"  # the claim's own test
    return Result(INCONCLUSIVE, mean, lo, hi, paired, test, p[test])


def combine(verdicts: list[str]) -> str:
    """A claim's verdict from its comparisons' verdicts (RULES)."""
    n, count = len(verdicts), Counter(verdicts)
    if count[SUPPORTED] and count[CONTRADICTED]:
        return MIXED
    for lead in (SUPPORTED, CONTRADICTED, NEGLIGIBLE):
        if n and count[lead] == n:
            return lead
        if count[lead]:
            rest = [v for v in (INCONCLUSIVE, NEGLIGIBLE) if v != lead and count[v]]
            what = ", ".join(f"{count[v]} {v}" for v in rest)
            what = f"the rest {rest[0]}" if len(rest) == 1 else what
            return f"{lead} in {count[lead]} of {n} ({what})"
    return INCONCLUSIVE
