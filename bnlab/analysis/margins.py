"""The margins table: the smallest effect that matters, per kind of measure, with the reason.

A comparison is judged against its margin (bnlab.analysis.verdicts): a difference smaller than it is
negligible, a larger one supports or contradicts the claim. Margins are fixed here, before the
results are read, and each claim takes its margins from this table (claim-specific ones only
with a reason written next to them in bnlab/analysis/claims/). docs/verdicts.md explains each entry.
Changing an entry is a reviewed change that lists every verdict it flips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Margin:
    """The smallest effect that matters for one kind of measure: an absolute difference
    (`ratio` False, in the measure's units) or a factor A/B (`ratio` True, compared on the log
    scale)."""

    name: str
    value: float
    ratio: bool
    why: str

    @property
    def scale(self) -> float:
        """The margin on the scale the comparison is tested on: log(value) for a ratio."""
        return math.log(self.value) if self.ratio else self.value

    def __str__(self) -> str:
        return f"x{self.value:.4g}" if self.ratio else f"{self.value:g}"

    def __format__(self, spec: str) -> str:
        """'{m}' in a claim's text: 'x1.25' or '0.005'; with a spec, the value formatted."""
        return format(self.value, spec) if spec else str(self)


ACCURACY = Margin(
    "accuracy",
    0.005,
    False,
    "half a percentage point of test accuracy. These networks err on 2-3% of MNIST's test "
    "images, so 0.005 is a sixth to a quarter of their errors: the smallest improvement a "
    "practitioner would act on. It is about three standard errors of one network's accuracy "
    "on 10,000 test images (0.0017 at 97%), so a smaller difference is within what drawing "
    "another test set would move, and it is below the effects the cited claims are about "
    "(the BN gains of the 2017 study's Fig. 4, 0.006-0.036 in bnlab's runs of its protocol).",
)
MAGNITUDE = Margin(
    "magnitude",
    1.25,
    True,
    "a factor 1.25 for quantities that act multiplicatively and span orders of magnitude "
    "across layers, activations and learning rates (gradient magnitudes, drift and internal "
    "covariate shift, curvature, Jacobian gain and spread, effective learning rates, angular "
    "updates). The mechanism claims are about effects of several-fold (the 2017 study's ~5x "
    "first-layer gradient; Santurkar et al.'s several-fold smoothness and gradient-change "
    "differences); a quarter is a third of a factor of 2 on the log scale these measures are "
    "read on, the least that could carry such a claim.",
)
NORM = Margin(
    "norm",
    math.sqrt(MAGNITUDE.value),
    True,
    "the square root of the magnitude margin (x1.118). What a weight norm does goes through "
    "its square: the effective learning rate lr/||w||^2 of weights feeding BN, the growth "
    "identity ||W_T||^2 = ||W_0||^2 + sum lr^2 ||g||^2 and an L2 penalty; norms that differ by "
    "this factor have squares, and effective learning rates, that differ by the magnitude "
    "margin.",
)
LOSS = Margin(
    "loss",
    1.2,
    True,
    "a factor 1.2 in cross-entropy, the accuracy margin expressed for losses: at the 2-3% "
    "error rates of these networks, 0.005 in accuracy is about a fifth of the errors, and the test "
    "loss is dominated by the same misclassified and nearly misclassified images, so it "
    "moves roughly in proportion to them. A ratio, because losses differ by orders of "
    "magnitude between protocols.",
)
STEPS = Margin(
    "steps",
    1.5,
    True,
    "a factor 1.5 in steps to a target accuracy: a third fewer steps, the smallest speed-up "
    "that changes what a run costs; smaller ones are within the quantisation of the "
    "evaluation grid (one step of 500 at 1,500-3,000 steps is a factor 1.2-1.33).",
)
LEARNING_RATE = Margin(
    "learning rate",
    2.0,
    True,
    "a factor 2 in the largest usable learning rate: less than one step of the half-decade "
    "learning-rate grids (x3-3.3), so one grid step decides, and a difference within a step "
    "cannot be measured.",
)

MARGINS: dict[str, Margin] = {
    m.name: m for m in (ACCURACY, MAGNITUDE, NORM, LOSS, STEPS, LEARNING_RATE)
}
FRAGILITY = (0.5, 2.0)  # every comparison is judged again with its margin times each


def specific(name: str, value: float, ratio: bool, why: str) -> Margin:
    """A claim-specific margin: only with its reason, written where the claim is."""
    if not why.strip():
        raise ValueError(f"claim-specific margin {name!r} needs a reason")
    return Margin(name, value, ratio, why)
