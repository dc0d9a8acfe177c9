"""Selection apart from confirmation, and more seeds only where a verdict is undecided.

An experiment that tunes each arm's learning rate (experiments.Experiment.confirm) is read in
two stages, fixed here before any result is seen:

1. Selection. Its sweep trains the learning-rate grid on the selection seeds (the YAML's
   `seeds`, all below CONFIRM_FROM); each arm's rate is the one with the best held-out
   accuracy (bnlab.analysis.selection.at_best_lr). A rate on the edge of the arm's grid extends the
   grid by the next half-decade rate in that direction (1, 3, 10, 30, ...: next_rate), trained on
   the selection seeds, until the chosen rate is interior or the new rate is worse (it
   diverges or loses on held-out accuracy), at most MAX_EXTENSIONS times.
2. Confirmation. Fresh seeds (CONFIRM_FROM, CONFIRM_FROM + 1, ...) train each arm at its
   frozen rate, in the run folder the selection chose; only they give the numbers a verdict
   reads. FIRST of them first; then a comparison that is still inconclusive, and that could
   be decided within CAP seeds at the spread its seeds show (seeds_needed), gets BATCH more
   for both of its arms, until it is decided or reaches CAP.

Looking at the data after every batch and stopping when it is decided would inflate the
error rates of a fixed-size test. The rule here keeps them: every test of a confirmed
comparison is made at ALPHA / LOOKS, LOOKS being the number of looks the design allows
(FIRST, FIRST + BATCH, ..., CAP), by multiplying its p-values by LOOKS before the claim's Holm
correction (Bonferroni over the looks: alpha spent equally at each look, fixed in advance).
The chance that any look wrongly rejects is then at most ALPHA, however the stopping went.
tests/test_sequential.py simulates it. Every decision reads only the tables, so a rerun on the
same tables decides the same.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from .verdicts import ALPHA, INCONCLUSIVE, Comparison, Result

CONFIRM_FROM = 100  # confirmation seeds are 100, 101, ...: never a selection seed
FIRST = 5  # confirmation seeds per arm at the first look
BATCH = 5  # seeds added per look to both arms of a comparison still undecided
CAP = 20  # confirmation seeds per arm at most
LOOKS = 1 + (CAP - FIRST) // BATCH  # looks the design allows: 5, 10, 15, 20 seeds
POWER = 0.8  # the power the seeds-needed estimate asks for
MAX_EXTENSIONS = 3  # grid extensions per arm at most (each one half a decade)

RULE = (
    "Where a claim's learning rates are chosen (each arm's best on held-out images), the "
    f"selection seeds only choose them: fresh confirmation seeds ({CONFIRM_FROM} on) give the "
    f"numbers judged, {FIRST} per arm first, and a comparison still inconclusive gets {BATCH} "
    f"more for both of its arms, up to {CAP}, while the spread its seeds show says {CAP} could "
    f"decide it. Its tests are made at {ALPHA:g}/{LOOKS} (every p-value times the {LOOKS} "
    "looks the design allows, before the claim's correction), so stopping once decided "
    f"keeps the error rates at {ALPHA:g}."
)


def confirmation_seeds(n: int) -> list[int]:
    """The first n confirmation seeds."""
    return list(range(CONFIRM_FROM, CONFIRM_FROM + n))


def is_confirmation(seed) -> bool:
    return int(seed) >= CONFIRM_FROM


def next_rate(lr: float, up: bool) -> float:
    """The next half-decade learning rate above (or below) lr: 1, 3, 10, 30, ... times a power
    of ten (0.3 -> 1 -> 3 -> 10; 0.01 -> 0.003 -> 0.001)."""
    exp = math.floor(math.log10(lr) + 1e-9)
    mant = lr / 10**exp
    steps = [1.0, 3.0, 10.0]
    if up:
        nxt = next(s for s in steps if s > mant * (1 + 1e-6))
    else:
        nxt = next(s for s in reversed([0.3, 1.0, 3.0]) if s < mant * (1 - 1e-6))
    return float(f"{nxt * 10**exp:.6g}")


def seeds_needed(sd: float, distance: float, paired: bool) -> float:
    """Seeds per arm for POWER at level ALPHA / LOOKS (one-sided, normal approximation) to
    tell a difference `distance` from the boundary that decides it, at the spread `sd` (of the
    paired differences; of one arm's values for Welch's test, both arms alike)."""
    if not distance > 0:
        return math.inf
    z = stats.norm.ppf(1 - ALPHA / LOOKS) + stats.norm.ppf(POWER)
    var = sd**2 if paired else 2 * sd**2
    return max(2.0, var * (z / distance) ** 2)


def distance_to_decision(mean: float, margin: float, kind: str) -> float:
    """How far the estimate is from the boundary whose exclusion decides the comparison: for
    'A > B', from 0 when the estimate is past the margin (supported or contradicted then need
    only the sign), else from the margin (negligible needs |A - B| < m); for 'A ~ B', from the
    margin either way."""
    if kind == "equivalent" or abs(mean) < margin:
        return abs(margin - abs(mean))
    return abs(mean)


def wants_more(c: Comparison, r: Result) -> int:
    """How many confirmation seeds per arm comparison `c` (judged `r`) should have next: its
    seeds plus BATCH (at most CAP) if it is a sequential comparison still inconclusive that
    could be decided within CAP seeds at the spread its seeds show; else 0."""
    if c.looks == 1 or r.verdict != INCONCLUSIVE:
        return 0
    a, b = c.values()
    n = min(len(a), len(b))
    if n >= CAP or n < 2:
        return 0
    sd = np.std(a - b, ddof=1) if c.paired else math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    need = seeds_needed(float(sd), distance_to_decision(r.mean, c.margin, c.kind), c.paired)
    return min(CAP, n + BATCH) if need <= CAP else 0
