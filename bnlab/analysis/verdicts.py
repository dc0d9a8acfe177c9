"""Verdicts on comparisons of two arms (sets of values, one per seed), independent of the
tables and of the claims that use them (bnlab.analysis.claims). The rules, in words, are RULES; a
claim's headline (headline) names where each outcome holds by the comparisons' settings.

Each comparison is tested with scipy's t-tests: paired by seed (ttest_rel) when both arms come
from one sweep table, whose members of a seed start from the same weights, Welch's
(ttest_ind, equal_var=False) otherwise; equivalence within the margin with statsmodels' TOST.
Within a claim, each test's p-values are adjusted across the claim's comparisons
(multipletests, method CORRECTION); a test rejects at an adjusted p <= ALPHA. A comparison of
confirmation seeds added in looks (bnlab.analysis.sequential) has its p-values multiplied by the
design's number of looks first.
"""

from __future__ import annotations

import gc
import math
import numbers
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_ind, ttost_paired

ALPHA = 0.05  # each test's level, after the correction; intervals are (1 - ALPHA)
CORRECTION = "holm"  # statsmodels multipletests method, within each claim
MIN_VALUES = 3  # fewer values in an arm: the comparison is inconclusive (and says why)

SUPPORTED, NEGLIGIBLE, CONTRADICTED, INCONCLUSIVE = (
    "supported",
    "negligible",
    "contradicted",
    "inconclusive",
)
REVERSED = "negligible (reversed)"  # a significant reversal smaller than the margin
VERDICTS = (SUPPORTED, CONTRADICTED, NEGLIGIBLE, REVERSED, INCONCLUSIVE)  # report order

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
*contradicted* when the one-sided test of A < B rejects and the mean difference is at least m \
the wrong way; *negligible* when the equivalence test (TOST) shows |A - B| < m, and \
*negligible (reversed)* when, in addition, A < B is significant: a reversal smaller than the \
margin; *inconclusive* otherwise (the seeds spread too much to tell, or a real effect may be \
on either side of the margin). A comparison "A ~ B" within m is *supported* when TOST shows \
|A - B| < m, *contradicted* when a one-sided test (in the direction of the estimate) shows A - \
B beyond +-m, *inconclusive* otherwise. An arm with fewer than {MIN_VALUES} values (members \
that collapsed, diverged or never reached the measure give none) makes its comparison \
inconclusive, and the report says so. A claim's headline is its scope: where it holds, where \
the effect is absent (negligible), where it reverses (contradicted), where the seeds cannot \
tell, each named by the settings that distinguish those comparisons from the others; a claim \
whose comparisons all agree takes their verdict."""


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
    setting: dict = field(default_factory=dict)  # what sets it apart ({'lr': 0.3}): headline
    # looks of a sequential design (bnlab.analysis.sequential): each test at ALPHA / looks
    looks: int = 1

    def __post_init__(self):
        ta, tb = self.a.attrs.get("table"), self.b.attrs.get("table")  # set by claims.arm
        if self.paired and ta and tb and ta != tb:
            raise ValueError(f"{self.label}: arms of {ta} and {tb} cannot be paired by seed")
        # arms of confirmation seeds (selection.at_best_lr marks them) are tested sequentially
        self.looks = max(self.looks, self.a.attrs.get("looks", 1), self.b.attrs.get("looks", 1))

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

    def too_few(self) -> str | None:
        """Why the comparison cannot be tested (fewer than MIN_VALUES values in an arm), or
        None: how many of each arm's members give a value."""
        a, b = self.values()
        if len(a) >= MIN_VALUES and len(b) >= MIN_VALUES:
            return None
        na, nb = self.a.notna().sum(), self.b.notna().sum()
        given = f"A {na} of {len(self.a)}, B {nb} of {len(self.b)} members"
        given += f", {len(a)} seeds in both" if self.paired else ""
        return (
            f"fewer than {MIN_VALUES} values in an arm ({given}; members that collapsed, "
            "diverged or never reached the measure give none)"
        )

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
        """Unadjusted p-values by test (TESTS), times self.looks (at most 1); none with fewer
        than MIN_VALUES in an arm."""
        a, b = self.values()
        if self.too_few():
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
        # NaN: no effect; a sequential design's looks: Bonferroni over them
        # (bnlab.analysis.sequential)
        return {k: 1.0 if math.isnan(v) else min(1.0, self.looks * float(v)) for k, v in p.items()}


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
    why: str | None = None  # why it was not tested (too few values)


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
        return Result(INCONCLUSIVE, mean, lo, hi, paired, why=c.too_few())
    if c.kind == "equivalent":
        rules = [(SUPPORTED, "tost"), (CONTRADICTED, "beyond")]
    else:  # an effect either way counts only where its estimate reaches the margin
        rules = [(NEGLIGIBLE, "tost")]
        if mean >= c.margin:
            rules.insert(0, (SUPPORTED, ">"))
        if mean <= -c.margin:
            rules.insert(0, (CONTRADICTED, "<"))
    for verdict, test in rules:
        if p[test] <= ALPHA:
            if verdict == NEGLIGIBLE and p["<"] <= ALPHA:
                verdict = REVERSED  # A < B, significantly, but within the margin
            return Result(verdict, mean, lo, hi, paired, test, p[test])
    test = "tost" if c.kind == "equivalent" else ">"  # the claim's own test
    return Result(INCONCLUSIVE, mean, lo, hi, paired, test, p[test])


def at_margins(comparisons: list[Comparison], factor: float) -> list[Result]:
    """The verdicts with every comparison's margin multiplied by `factor` (the fragility
    check: a headline that changes at half or double its margins is fragile)."""
    return judge([replace(c, margin=c.margin * factor) for c in comparisons])


# how a comparison's verdict reads in a headline, by kind of comparison
OUTCOMES = {
    "greater": {
        SUPPORTED: "holds",
        CONTRADICTED: "reverses",
        NEGLIGIBLE: "absent",
        REVERSED: "reversed within the margin",
        INCONCLUSIVE: "undecided",
    },
    "equivalent": {SUPPORTED: "holds", CONTRADICTED: "fails", INCONCLUSIVE: "undecided"},
}
ORDER = ["holds", "reverses", "fails", "absent", "reversed within the margin", "undecided"]


def counts(results: list[Result]) -> str:
    """'2 supported, 1 negligible': the number of comparisons per verdict."""
    n = Counter(r.verdict for r in results)
    return ", ".join(f"{n[v]} {v}" for v in VERDICTS if n[v]) or "no comparisons"


def headline(comparisons: list[Comparison], results: list[Result]) -> str:
    """A claim's scope: the verdict its comparisons share, or where each outcome holds, named
    by the settings that distinguish those comparisons ('holds at lr 0.03-0.3; absent at lr
    0.01; undecided at lr 1, 3')."""
    if not results:
        return INCONCLUSIVE
    if len({r.verdict for r in results}) == 1:
        return results[0].verdict
    words = [OUTCOMES[c.kind][r.verdict] for c, r in zip(comparisons, results)]
    settings = [c.setting for c in comparisons]
    keys = list(dict.fromkeys(k for s in settings for k in s))
    parts = []
    for word in sorted(set(words), key=ORDER.index):
        group = [i for i, w in enumerate(words) if w == word]
        parts.append(f"{word} {_describe(group, list(range(len(settings))), settings, keys)}")
    return "; ".join(parts)


def _describe(
    group: list[int], among: list[int], settings: list[dict], keys: list[str], depth: int = 0
) -> str:
    """Name the comparisons `group` among `among` by their settings: one setting's values if
    they single the group out ('at lr 0.03-0.3'), else split on the first setting that varies
    ('for relu (fc1, fc2), sigmoid (hidden)'; deeper: 'fc1 relu/tanh')."""
    if group == among:
        return "everywhere"
    for k in keys:
        values = {_key(settings[i].get(k)) for i in group}
        if [i for i in among if _key(settings[i].get(k)) in values] == group:
            chosen = [settings[i].get(k) for i in group]
            text = _values(k, chosen, [settings[i].get(k) for i in among])
            return text if depth == 0 else _bare(text).replace(", ", "/")
    varying = [k for k in keys if len({_key(settings[i].get(k)) for i in among}) > 1]
    if not varying:  # the settings do not tell them apart
        return f"in {len(group)} of {len(among)} comparisons"
    k, rest = varying[0], [x for x in keys if x != varying[0]]
    numeric = _numbers([settings[i].get(k) for i in among])
    values = list(dict.fromkeys(settings[i].get(k) for i in group))
    subs = {_key(v): [i for i in group if settings[i].get(k) == v] for v in values}
    amongs = {_key(v): [i for i in among if settings[i].get(k) == v] for v in values}
    qualified = any(subs[_key(v)] != amongs[_key(v)] for v in values)
    parts = []
    for v in values:
        sub, sub_among = subs[_key(v)], amongs[_key(v)]
        name, inner = f"{v:g}" if numeric else _key(v), None
        if sub != sub_among:
            inner = _describe(sub, sub_among, settings, rest, depth + 1)
        elif qualified and depth < 2:  # beside qualified values: this one holds for all
            below = [x for x in rest if len({_key(settings[i].get(x)) for i in sub}) > 1]
            inner = f"every {below[0]}" if below else None
        if inner:
            name += f" ({inner})" if depth == 0 else f" [{inner}]" if depth == 1 else f" {inner}"
        parts.append(name)
    if depth:
        return ", ".join(parts)
    return (f"at {k} " if numeric else "for ") + ", ".join(parts)


def _bare(text: str) -> str:
    """'at lr 0.3' -> 'lr 0.3', 'for relu' -> 'relu': inside a description."""
    return text.removeprefix("for ").removeprefix("at ")


def _key(value) -> str:
    return "-" if value is None else str(value)


def _values(key: str, values: list, among: list) -> str:
    """'at lr 0.03-0.3' (numbers: runs of consecutive values among all of the key's values
    joined), 'for relu, sigmoid' (names)."""
    if not _numbers(among):
        chosen = [x for x in dict.fromkeys(among) if x in values]
        return "for " + ", ".join(_key(v) for v in chosen)
    order = sorted(set(among))
    chosen = [x for x in order if x in set(values)]
    runs, run = [], [chosen[0]]
    for x in chosen[1:]:
        if order.index(x) == order.index(run[-1]) + 1:
            run.append(x)
        else:
            runs.append(run)
            run = [x]
    runs.append(run)
    text = [f"{r[0]:g}-{r[-1]:g}" if len(r) > 2 else ", ".join(f"{x:g}" for x in r) for r in runs]
    return f"at {key} " + ", ".join(text)


def _numbers(values: list) -> bool:
    return all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)
