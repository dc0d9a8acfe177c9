"""What the claims share: the activations they compare, comparisons of BN against no BN per
activation, and the notes several claims write (each arm's chosen learning rate, a comparison
that is not judged, study_ghost's group sizes)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..margins import ACCURACY, Margin
from ..selection import ARM_KEYS
from ..verdicts import Comparison
from .framework import arm

# the smallest accuracy difference that matters (bnlab.analysis.margins)
ACC_MARGIN = ACCURACY.value
ACTS = ["relu", "lrelu", "sigmoid", "softplus", "tanh"]
RELU_SIGMOID = ["relu", "sigmoid"]
SHIFT_MODES = ("running", "adapted", "batch")  # bnlab.measurement.shift's evaluation modes
NORMS2 = ("none", "batch")


def _bn_vs_none(
    t, measure, margin, acts=ACTS, flip=False, log=False, label=None, setting=None, **where
):
    """Per activation with members: BN > no BN (or no BN > BN with flip), labelled
    label.format(act=...); setting: what else sets these comparisons apart (headline). An
    activation with members in one arm only is compared (inconclusive: an arm is empty)."""
    label = label or ("{act}: no BN > BN" if flip else "{act}: BN > no BN")
    out = []
    for act in acts:
        bn = arm(t, measure, model__norm="batch", model__activation=act, **where)
        no = arm(t, measure, model__norm="none", model__activation=act, **where)
        if bn.empty and no.empty:
            continue
        a, b = (no, bn) if flip else (bn, no)
        where_act = {**(setting or {}), "activation": act}
        out.append(Comparison(label.format(act=act), a, b, margin, log=log, setting=where_act))
    return out


def _smaller_with_bn(t, measure, ratio: Margin, label=None, acts=ACTS, setting=None):
    """The SGD runs per activation: no BN > BN as a ratio, margin `ratio`."""
    return _bn_vs_none(
        t,
        measure,
        ratio.scale,
        acts,
        flip=True,
        log=True,
        label=label,
        setting=setting,
        optim__name="sgd",
    )


def _bn(norm: str) -> str:
    """'BN' or 'no BN', for notes."""
    return "BN" if norm == "batch" else "no BN"


def _best_lr_note(best: pd.DataFrame) -> str:
    """'relu: no BN lr 0.3, BN before lr 1, ...': each arm's selected learning rate."""
    if "model.placement" not in best:  # one placement in the sweep: BN before (the default)
        best = best.assign(**{"model.placement": "before"})
    arms = best.groupby(ARM_KEYS, dropna=False)["optim.lr"].first()
    order = {"none": 0, "before": 1, "after": 2}
    parts = []
    for (act, norm, place), lr in sorted(
        arms.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], order.get(kv[0][2], 3)))
    ):
        name = _bn(norm) + ("" if norm == "none" else f" {place}")
        parts.append(f"{act}, {name}: lr {lr:g}")
    return "learning rate chosen on the held-out images: " + "; ".join(parts)


def _none_bn(values: pd.Series, key: tuple, spec: str) -> str:
    """'no BN x, BN y' from a Series indexed by (*key, model.norm)."""
    return ", ".join(f"{_bn(n)} {format(values.get((*key, n), np.nan), spec)}" for n in NORMS2)


def _as_note(prefix: str, cmp: Comparison) -> str:
    """A comparison that does not decide the verdict, as a note with its interval."""
    mean, lo, hi, _ = cmp.diff()
    if cmp.log:
        mean, lo, hi = (math.exp(x) for x in (mean, lo, hi))
        return f"{prefix}, {cmp.label}: x{mean:.3g} [{lo:.3g}, {hi:.3g}]"
    return f"{prefix}, {cmp.label}: {mean:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def _ghost_note(ghost: pd.DataFrame, measure: str, what: str, claim: str) -> str:
    """study_ghost's `measure` by BN group size at a fixed SGD batch of 64, as a note."""
    means = ghost.groupby(["model.activation", "model.bn_group"])[measure].mean()
    parts = [
        f"{act} " + ", ".join(f"{g or 64}: {means.get((act, g), np.nan):.4f}" for g in (4, 16, 0))
        for act in RELU_SIGMOID
    ]
    return (
        f"ghost BN ({claim}; SGD batch 64, BN statistics over groups of 4 / 16 / 64, the SGD "
        f"noise the same), {what}: " + "; ".join(parts)
    )


def _fewer_steps_with_bn(best: pd.DataFrame, target: float, ratio: Margin) -> list[Comparison]:
    """Per activation (relu, sigmoid), steps to `target` test accuracy without BN > with BN,
    as a ratio with margin `ratio` (C19, C26)."""
    label = f"{{act}}: steps to {target:.0%} without BN > with BN"
    measure = f"steps_to_{target}"
    return _bn_vs_none(
        best,
        measure,
        ratio.scale,
        RELU_SIGMOID,
        flip=True,
        log=True,
        label=label,
        setting={"measure": f"steps to {target:.0%}"},
    )
