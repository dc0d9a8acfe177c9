"""The questions researchers ask next (C27 on), each with its own extra study: is BN's benefit
the larger learning rate it allows, and can warmup or clipping give that rate to a network
without BN (C27, C28: Bjorck et al. 2018; study_matched_lr at study_tuned's chosen rates)."""

from __future__ import annotations

import pandas as pd

from ..margins import ACCURACY, STEPS
from ..selection import LR_SELECTION, ClaimError, at_best_lr, with_acc0
from ..verdicts import Comparison
from .compare import RELU_SIGMOID, _as_note, _best_lr_note, _bn
from .framework import arm, claim

# study_matched_lr's arms without BN (configs/matched_lr/): what helps the large rate
AIDS = {"plain": "no BN", "warmup": "no BN + warmup", "clip": "no BN + clipping"}


def _aid(t: pd.DataFrame) -> pd.Series:
    """Each member's aid: 'warmup' (optim.warmup_steps > 0), 'clip' (optim.clip_norm > 0) or
    'plain'."""
    warm = t.get("optim.warmup_steps", pd.Series(0, index=t.index)).fillna(0) > 0
    clip = t.get("optim.clip_norm", pd.Series(0.0, index=t.index)).fillna(0) > 0
    return pd.Series("plain", index=t.index).mask(warm, "warmup").mask(clip, "clip")


def matched(study_matched_lr: pd.DataFrame, study_tuned: pd.DataFrame):
    """(the study's members with acc0 and 'aid', study_tuned's members at each arm's chosen
    rate (BN before the activation and no BN), {(activation, norm): that rate}).
    ClaimError if study_matched_lr was trained at rates study_tuned no longer chooses: BN at
    no BN's rate, no BN at BN's."""
    best = at_best_lr(study_tuned)
    best = best[best["model.placement"] != "after"]
    rate = best.groupby(["model.activation", "model.norm"])["optim.lr"].first().to_dict()
    t = with_acc0(study_matched_lr)
    t = t.assign(aid=_aid(t))
    for (act, norm), g in t.groupby(["model.activation", "model.norm"]):
        other = "none" if norm == "batch" else "batch"
        want = rate.get((act, other))
        for lr in sorted(set(g["optim.lr"])):
            if want is None or abs(lr / want - 1) > 1e-6:
                raise ClaimError(
                    f"{t.attrs.get('table', 'study_matched_lr')}: {act}, {_bn(norm)} was "
                    f"trained at lr {lr:g}, but study_tuned now chooses lr {want} for {act}, "
                    f"{_bn(other)}; set that rate in configs/matched_lr/ and rerun `bnlab "
                    "reproduce --only study_matched_lr`"
                )
    return t, best, rate


@claim(
    "C27",
    statement="BN's benefit is the larger learning rate it allows: at the best learning rate of "
    "the network without BN, BN ends no more accurate and trains no faster.",
    source="Bjorck et al. 2018",
    experiment=["study_matched_lr", "study_tuned"],
    selection=LR_SELECTION,
    margin=ACCURACY,
    ratio=STEPS,
    target=0.97,
    protocol="Decided on study_tuned's protocol at the rates its selection seeds chose: BN "
    "trained at no BN's best rate on fresh seeds (study_matched_lr), against no BN's "
    "confirmation seeds at that rate; nothing is tuned on the seeds judged.",
    test="20,000 steps of SGD (batch 64, mean loss), relu and sigmoid: BN before the activation "
    "at no BN's best lr (chosen on the held-out images in study_tuned) vs no BN at that lr: "
    "final test accuracy equivalent within {margin} (diverged = 0), and steps to {target:g} "
    "test accuracy equivalent within a ratio {ratio} (never reached: the run length + 1); "
    "Welch's test (two tables). BN at its own best rate against the same no-BN arm (C4, C19) "
    "as notes, to show what the larger rate adds.",
)
def c27(c, study_matched_lr, study_tuned, margin, ratio, target):
    """BN at no BN's best lr ~ no BN there, in accuracy and in steps to the target."""
    t, best, rate = matched(study_matched_lr, study_tuned)
    c.notes.append(_best_lr_note(best))
    steps = f"steps_to_{target}"
    out = []
    for act in RELU_SIGMOID:
        lr = rate.get((act, "none"))
        bn = dict(model__activation=act, model__norm="batch")
        no = dict(model__activation=act, model__norm="none")
        for measure, m, log, what in (
            ("acc0", margin.scale, False, "accuracy"),
            (steps, ratio.scale, True, f"steps to {target:.0%}"),
        ):
            there, own, base = (
                arm(t, measure, **bn),
                arm(best, measure, **bn),
                arm(best, measure, **no),
            )
            setting = {"activation": act, "measure": what}
            if log:  # fewer steps with BN is its advantage: no BN / BN
                label = f"{act}, lr {lr:g}: {what} without BN ~ with BN"
                out.append(Comparison(label, base, there, m, "equivalent", True, False, setting))
                note = _note(
                    f"{act}, each at its best lr: {what} without BN > with BN", base, own, m, True
                )
            else:
                label = f"{act}, lr {lr:g}: accuracy BN ~ no BN"
                out.append(Comparison(label, there, base, m, "equivalent", False, False, setting))
                note = _note(
                    f"{act}, each at its best lr: accuracy BN > no BN", own, base, m, False
                )
            c.notes.append(_as_note("BN at its own best lr (study_tuned, C4/C19)", note))
    return out


def _note(label, a, b, margin, log) -> Comparison:
    """An unpaired comparison that is not judged, for _as_note."""
    return Comparison(label, a, b, margin, log=log, paired=False)


@claim(
    "C28",
    statement="Linear warmup or gradient-norm clipping lets the network without BN train at "
    "the learning rate BN allows.",
    source="Bjorck et al. 2018 (BN's benefit is the large rate); Goyal et al. 2017 (warmup); "
    "Pascanu et al. 2013 (clipping)",
    experiment=["study_matched_lr", "study_tuned"],
    selection=LR_SELECTION,
    margin=ACCURACY,
    protocol="Decided on study_tuned's protocol at BN's best rate (chosen on the held-out "
    "images by study_tuned's selection seeds), fresh seeds for every arm (study_matched_lr).",
    test="20,000 steps of SGD (batch 64, mean loss), relu and sigmoid, no BN at BN's best lr: "
    "with linear warmup over the first 1,000 steps, and with the gradient norm clipped at 1, "
    "each vs plain no BN at that lr: final test accuracy greater (diverged = 0), margin "
    "{margin}, paired by seed. Whether plain no BN trains at that lr at all, and each aided "
    "arm against no BN at its own best lr (study_tuned's confirmation seeds), as notes.",
)
def c28(c, study_matched_lr, study_tuned, margin):
    """Warmup (clipping) > plain, no BN at BN's best lr; against no BN's own best as notes."""
    t, best, rate = matched(study_matched_lr, study_tuned)
    out = []
    for act in RELU_SIGMOID:
        lr = rate.get((act, "batch"))
        where = dict(model__activation=act, model__norm="none")
        plain = arm(t, "acc0", aid="plain", **where)
        c.notes.append(f"{act}, no BN at BN's lr {lr:g}: " + _outcomes(t, act))
        own = arm(best, "acc0", **where)
        for aid in ("warmup", "clip"):
            helped = arm(t, "acc0", aid=aid, **where)
            setting = {"activation": act, "aid": aid}
            label = f"{act}, lr {lr:g}: {AIDS[aid]} > {AIDS['plain']}"
            out.append(Comparison(label, helped, plain, margin.scale, setting=setting))
            lbl = f"{act}: {AIDS[aid]} at lr {lr:g} > no BN at its best lr"
            c.notes.append(
                _as_note(
                    "against no BN's best (study_tuned)",
                    _note(lbl, helped, own, margin.scale, False),
                )
            )
    return out


def _outcomes(t: pd.DataFrame, act: str) -> str:
    """'no BN: mean test accuracy 0.63, 6 of 10 reach 0.9, 2 collapsed, 0 diverged; ...' for
    each arm without BN of one activation."""
    parts = []
    for aid, name in AIDS.items():
        g = t[(t["model.activation"] == act) & (t["model.norm"] == "none") & (t["aid"] == aid)]
        parts.append(
            f"{name}: mean test accuracy {g['acc0'].mean():.4f}, {int((g['acc0'] >= 0.9).sum())} "
            f"of {len(g)} reach 0.9, {int(g['collapsed'].sum())} collapsed, "
            f"{int((g['status'] == 'diverged').sum())} diverged"
        )
    return "; ".join(parts)
