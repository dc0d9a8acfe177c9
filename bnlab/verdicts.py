"""Verdicts on comparisons of two arms (sets of values, one per seed), independent of the
tables and of the claims that use them (bnlab.claims).

A comparison's verdict comes from the 95% t-interval of the mean difference (paired by seed
when both arms have the same seeds: BN and no-BN members of one seed start from the same
weights) and a smallest effect that matters, `margin`:

  directional claim "A > B":   supported       the interval lies above 0 and the mean
                                               difference is at least the margin
                               not supported   the interval lies below 0 (the opposite holds),
                                               or entirely below the margin (too small to matter)
                               inconclusive    otherwise: the interval does not decide (the
                                               seeds spread too much, or it straddles the margin)
  equivalence claim "A ~ B":   supported       the interval lies within +-margin
                               not supported   the interval lies entirely outside +-margin
                               inconclusive    otherwise

A claim's verdict combines its comparisons: all alike -> that verdict; otherwise "mixed".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, MIXED = (
    "supported",
    "not supported",
    "inconclusive",
    "mixed",
)


@dataclass
class Comparison:
    """Arm a vs arm b on one measure; claim: a > b (kind 'greater') or a ~ b ('equivalent')."""

    label: str
    a: pd.Series  # values indexed by seed
    b: pd.Series
    margin: float
    kind: str = "greater"
    log: bool = False  # compare log values (ratios) instead of differences

    def diff(self) -> tuple[float, float, float, bool]:
        """Mean difference a - b (of logs if self.log) and its 95% t-interval; paired?"""
        a, b = self.a.dropna(), self.b.dropna()
        if self.log:
            a, b = np.log(a.clip(lower=1e-300)), np.log(b.clip(lower=1e-300))
        paired = len(a) > 1 and sorted(a.index) == sorted(b.index)
        if paired:
            d = (a - b.reindex(a.index)).to_numpy()
            n, mean, se = len(d), d.mean(), d.std(ddof=1) / math.sqrt(len(d))
            dof = n - 1
        else:
            if len(a) < 2 or len(b) < 2:
                return (float(a.mean() - b.mean()), -math.inf, math.inf, False)
            va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
            mean, se = a.mean() - b.mean(), math.sqrt(va + vb)
            dof = (va + vb) ** 2 / ((va**2) / (len(a) - 1) + (vb**2) / (len(b) - 1) or 1e-300)
        if se == 0:
            return float(mean), float(mean), float(mean), paired
        t = stats.t.ppf(0.975, dof)
        return float(mean), float(mean - t * se), float(mean + t * se), paired

    def verdict(self) -> str:
        """This comparison's verdict (see the module docstring)."""
        return verdict(*self.diff()[:3], margin=self.margin, kind=self.kind)


def verdict(mean: float, lo: float, hi: float, margin: float, kind: str = "greater") -> str:
    """The verdict of one comparison from its mean difference and 95% interval [lo, hi]."""
    if kind == "equivalent":
        if -margin <= lo and hi <= margin:
            return SUPPORTED
        if lo > margin or hi < -margin:
            return NOT_SUPPORTED
        return INCONCLUSIVE
    if lo > 0 and mean >= margin:
        return SUPPORTED
    if hi < 0 or hi < margin:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def combine(verdicts: list[str]) -> str:
    """A claim's verdict from its comparisons' verdicts."""
    if not verdicts:
        return INCONCLUSIVE
    return verdicts[0] if len(set(verdicts)) == 1 else MIXED
