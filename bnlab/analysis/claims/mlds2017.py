"""The claims of the 2017 single-seed study of BN in small MNIST MLPs, as their sources say
(C1-C8b: its Figs. 1-6 and 9 and its mismatch experiment; C3 also cites Ioffe & Szegedy's
conjecture and Yang et al. 2019, C7 Ioffe 2017's Batch Renorm)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..margins import ACCURACY, MAGNITUDE, NORM
from ..selection import LR_SELECTION, at_best_lr, require
from ..verdicts import Comparison
from .compare import (
    ACTS,
    NORMS2,
    RELU_SIGMOID,
    _as_note,
    _best_lr_note,
    _bn,
    _bn_vs_none,
    _ghost_note,
    _smaller_with_bn,
)
from .framework import arm, claim


@claim(
    "C1",
    statement="BN limits the growth of weight magnitude.",
    source="2017 study, Fig. 1",
    experiment="mlds2017_fig1",
    optional=["study_lr"],
    growth=NORM,
    protocol="Decided on the 2017 runs (the figure the claim cites) and study_lr's learning rates. "
    "The answer is per learning rate: without weight decay the norm of a weight that BN makes "
    "scale-invariant grows by its squared steps, which the lr sets. Whether a smaller norm "
    "regularises is C18's and C21's question: the norm of such a weight only sets its "
    "effective learning rate lr/||w||^2.",
    test="mean |W2| at the end of the 40,000-step SGD runs (lr 1e-4, summed loss), no BN > BN, "
    "pooled over activation x seed (paired); and at each learning rate of study_lr (relu, "
    "mean loss, 5,000 steps); compared as a ratio, margin {growth}. Per activation as notes, "
    "and, with BN, the identity ||W_T||^2 = ||W_0||^2 + sum_t lr^2 ||g_t||^2 of plain SGD for "
    "weights that BN makes scale-invariant, checked on every step.",
)
def c1(c, mlds2017_fig1, study_lr, growth):
    """Layer 2's final mean |W|, larger without BN: BN makes a layer invariant to its weights'
    scale, and the study reads its Fig. 1 as BN keeping the weights small. Pooled over the
    activations (one claim about BN, not five), and across learning rates: without weight
    decay a scale-invariant weight's norm grows by the squared step sizes, so growth depends
    on the lr, not on regularisation."""
    per_act = _smaller_with_bn(mlds2017_fig1, "w2_mean_abs_final", growth)
    no = pd.concat({x.label.split(":")[0]: x.a for x in per_act})
    bn = pd.concat({x.label.split(":")[0]: x.b for x in per_act})
    label = "lr 1e-4 (summed loss), pooled over activations: no BN > BN"
    out = [Comparison(label, no, bn, growth.scale, log=True, setting={"lr": 1e-4})]
    for x in per_act:
        c.notes.append(f"{x.label}: ratio {math.exp(x.diff()[0]):.3f}")
    for n in ("none", "batch"):  # the figure's setting: sigmoid
        where = dict(model__norm=n, model__activation="sigmoid", optim__name="sgd")
        s, f = (
            arm(mlds2017_fig1, "w2_mean_abs_start", **where),
            arm(mlds2017_fig1, "w2_mean_abs_final", **where),
        )
        c.notes.append(
            f"sigmoid, {_bn(n)}: mean |W2| {s.mean():.4f} at step 0 -> {f.mean():.4f} at the end"
        )
    if study_lr is None:
        c.notes.append("study_lr not run")
        return out
    for lr in sorted(study_lr["optim.lr"].unique()):
        no = arm(study_lr, "w2_mean_abs_final", model__norm="none", optim__lr=lr)
        bn = arm(study_lr, "w2_mean_abs_final", model__norm="batch", optim__lr=lr)
        label = f"lr {lr:g} (mean loss, relu): no BN > BN"
        out.append(Comparison(label, no, bn, growth.scale, log=True, setting={"lr": lr}))
    for layer in ("fc1", "fc2"):  # the identity, checked on every BN member of study_lr
        cols = (f"scale_ratio_{layer}", f"scale_growth_rel_{layer}")
        bn = require(study_lr, *cols)[study_lr["model.norm"] == "batch"].groupby("optim.lr")
        ratio, rel = bn[f"scale_ratio_{layer}"].mean(), bn[f"scale_growth_rel_{layer}"].mean()
        c.notes.append(
            f"with BN, {layer} (scale-invariant, no weight decay): (||W_T||^2 - ||W_0||^2) / "
            "sum_t lr^2 ||g_t||^2 per lr (1: the growth is the squared steps, nothing else) "
            + ", ".join(f"{lr:g}: {v:.3g}" for lr, v in ratio.items())
            + "; relative growth ||W_T||^2/||W_0||^2 - 1 "
            + ", ".join(f"{lr:g}: {v:.3g}" for lr, v in rel.items())
        )
        if layer == "fc1":
            c.notes.append(
                f"with BN, fc1's relative growth rises from {rel.iloc[0]:.3g} at lr "
                f"{rel.index[0]:g} to {rel.iloc[-1]:.3g} at lr {rel.index[-1]:g}, and the identity "
                f"holds within {abs(ratio - 1).max():.1%} at every lr: BN changes the law of the "
                "weights' growth (the squared steps, set by the lr), rather than limiting it"
            )
    return out


@claim(
    "C2",
    statement="BN enlarges first-layer gradients and so fights vanishing gradients (sigmoid "
    "~0.1 vs ~0.02 in the study).",
    source="2017 study, Fig. 2",
    experiment="mlds2017_fig2",
    growth=MAGNITUDE,
    protocol="Decided on the 2017 protocol: the claim is about its Fig. 2 (summed loss, lr 1e-4), "
    "whose gradients scale with the batch.",
    test="mean |dL/dW1| of the summed loss averaged over steps 1-1,000, BN > no BN, sigmoid and "
    "relu; ratio, margin {growth}.",
)
def c2(c, mlds2017_fig2, growth):
    """Early first-layer gradients, larger with BN (the study's Fig. 2: without BN, sigmoid
    saturates and its gradients vanish)."""
    return _bn_vs_none(
        mlds2017_fig2, "grad1_mean_abs_1k", growth.scale, acts=["sigmoid", "relu"], log=True
    )


@claim(
    "C3",
    statement="BN pushes layer-Jacobian singular values toward 1 (better isometry).",
    source="2017 study; Ioffe & Szegedy Sec. 3.3 (conjecture); Yang et al. 2019",
    experiment="mlds2017_fig4",
    optional=["yang2019_depth", "study_lr"],
    figure="mlds2017_fig3",
    gain=MAGNITUDE,
    spread=MAGNITUDE,
    protocol="Decided on the 2017 runs' Jacobians and a depth study at initialisation, with gain "
    "and spread as separate comparisons: the faithful figure's [1/2, 2] band counts BN's "
    "gain gamma/sigma_B as isometry.",
    test="per-sample Jacobian singular values s (BN in eval mode, 100 test images), averaged "
    "over the probes of the 40,000-step SGD runs, per activation, for layer 1, layer 2 and the "
    "end-to-end hidden Jacobian, two comparisons each: the gain mean(s^2) closer to 1 with BN "
    "(|log gain|, margin log {gain:g}) and the spread var(s^2)/mean(s^2)^2 smaller with BN "
    "(ratio, margin {spread:g}x). At initialisation, 32 hidden layers (yang2019_depth), BN in "
    "training mode: the end-to-end gain closer to 1 with BN (margin log {gain:g}).",
)
def c3(c, mlds2017_fig4, yang2019_depth, study_lr, gain, spread):
    """Isometry is two things: a gain near 1 (mean s^2) and a small spread of the singular
    values around it. BN scales a layer by gamma/sigma_B, which moves the gain without
    making the values any more alike, so the two are compared apart. The 2017 study's
    fraction in [1/2, 2], which mixes them, is kept as notes."""
    out = []
    for layer in ("fc1", "fc2", "hidden"):
        for act in ACTS:
            where = dict(model__activation=act, optim__name="sgd")
            bn = arm(mlds2017_fig4, f"jac_s2_mean_{layer}", model__norm="batch", **where)
            no = arm(mlds2017_fig4, f"jac_s2_mean_{layer}", model__norm="none", **where)
            label = f"{act}, {layer}: gain further from 1 without BN"
            where = {"measure": "gain", "layer": layer, "activation": act}
            out.append(
                Comparison(label, _far_from_1(no), _far_from_1(bn), gain.scale, setting=where)
            )
        label = f"{{act}}, {layer}: spread without BN > with BN"
        where = {"measure": "spread", "layer": layer}
        out += _smaller_with_bn(mlds2017_fig4, f"jac_spread_{layer}", spread, label, setting=where)
        for act in ACTS:
            where = dict(model__activation=act, optim__name="sgd")
            f = {
                n: arm(mlds2017_fig4, f"jac_frac_iso_{layer}", model__norm=n, **where)
                for n in NORMS2
            }
            c.notes.append(
                f"{act}, {layer}: fraction of s in [1/2, 2] (the study's measure) "
                f"{f['batch'].mean():.3f} with BN, {f['none'].mean():.3f} without"
            )
    if study_lr is not None:  # BN's own gain, recorded on study_lr's runs
        bn = require(study_lr, "bn_log_gain_bn1_start", "bn_log_gain_bn1_final")
        bn = bn[bn["model.norm"] == "batch"]
        end = bn.groupby("optim.lr")["bn_log_gain_bn1_final"].mean()
        c.notes.append(
            "BN's own gain gamma/sigma_B at bn1 (geometric mean over units, study_lr, relu): "
            f"{10 ** bn['bn_log_gain_bn1_start'].mean():.3g} at step 0 (raw pixels), after "
            "5,000 steps " + ", ".join(f"{10**v:.3g} at lr {lr:g}" for lr, v in end.items())
        )
    if yang2019_depth is None:
        c.notes.append("yang2019_depth not run")
        return out
    standardized = (
        yang2019_depth["data.standardize"].eq(True)
        if "data.standardize" in yang2019_depth
        else pd.Series(False, index=yang2019_depth.index)
    )
    _input_scale_notes(c, yang2019_depth[yang2019_depth["depth"] == 2], standardized)
    yang2019_depth = yang2019_depth[~standardized]
    deepest = int(yang2019_depth["depth"].max())
    for act in sorted(yang2019_depth["model.activation"].unique()):
        where = dict(model__activation=act, depth=deepest)
        g = {n: arm(yang2019_depth, "init_jac_gain_hidden", model__norm=n, **where) for n in NORMS2}
        label = f"init, {deepest} layers, {act}: gain further from 1 without BN"
        where = {"measure": "gain", "layer": f"{deepest} layers at init", "activation": act}
        far = _far_from_1(g["none"]), _far_from_1(g["batch"])
        out.append(Comparison(label, *far, gain.scale, setting=where))
        for n in NORMS2:
            m = yang2019_depth[
                (yang2019_depth["model.norm"] == n) & (yang2019_depth["model.activation"] == act)
            ]
            per = m.groupby("depth")["init_jac_gain_hidden"].median()
            c.notes.append(
                f"init, {act}, {_bn(n)}: end-to-end gain by depth (median over seeds) "
                + ", ".join(f"{d}: {v:.3g}" for d, v in per.items())
            )
    return out


def _input_scale_notes(c, shallow: pd.DataFrame, standardized: pd.Series) -> None:
    """C3's control: BN's gain at initialisation with raw and with standardised pixels."""
    std = shallow[standardized.reindex(shallow.index)]
    if std.empty:
        c.notes.append("study_input_scale (standardised inputs) not run")
        return
    raw = shallow[~standardized.reindex(shallow.index)]
    for (act, norm), g in std.groupby(["model.activation", "model.norm"]):
        r = raw[(raw["model.activation"] == act) & (raw["model.norm"] == norm)]
        c.notes.append(
            f"init, 2 hidden layers, {act}, {_bn(norm)}: end-to-end gain (median over seeds) "
            f"{r['init_jac_gain_hidden'].median():.3g} with raw pixels, "
            f"{g['init_jac_gain_hidden'].median():.3g} with standardised pixels"
        )


def _far_from_1(values: pd.Series) -> pd.Series:
    """|log x|: how far a gain is from 1, either way (a factor of 2 up or down alike)."""
    out = np.log(values).abs()
    out.attrs = values.attrs
    return out


@claim(
    "C4",
    statement="BN improves accuracy for every activation, and helps sigmoid the most.",
    source="2017 study, Fig. 4",
    experiment="study_tuned",
    optional=["mlds2017_fig4"],
    selection=LR_SELECTION,
    margin=ACCURACY,
    protocol="Decided on each arm at its own best learning rate (study_tuned). At the 2017 "
    "protocol's one small learning rate (1e-4) BN's lead is partly the larger effective "
    "step it takes there, so those results are notes.",
    test="final test accuracy after 20,000 steps (studies protocol: SGD on the mean loss, batch "
    "64) with each arm at its own best learning rate of 0.03-3, chosen on the held-out images "
    "(diverged = 0): BN before the activation > no BN, for relu and sigmoid; margin {margin:g}. "
    "The 2017 protocol (40,000 steps at SGD lr 1e-4, every activation) as notes: one small "
    "fixed learning rate favours BN, which trains faster at it.",
)
def c4(c, study_tuned, mlds2017_fig4, margin):
    """Final accuracy at each arm's best lr, BN > no BN per activation; which one gains most
    is a note (a ranking of means, not a comparison), and so is the fixed-lr result."""
    best = at_best_lr(study_tuned)
    c.notes.append(_best_lr_note(best))
    before = best[best["model.placement"] != "after"]  # BN before its activation, and no BN
    out = _bn_vs_none(before, "acc0", margin.scale, acts=RELU_SIGMOID)
    gains = {x.label.split(":")[0]: x.diff()[0] for x in out}
    if gains:
        top = max(gains, key=gains.get)
        rank = (
            "all within the margin: no activation gains most"
            if max(abs(v) for v in gains.values()) < margin.scale
            else f"largest for {top}"
            + (" (as claimed)" if top == "sigmoid" else " (the claim says sigmoid)")
        )
        c.notes.append(
            "gain from BN at the best learning rates (mean test accuracy difference): "
            + ", ".join(f"{k} {v:+.4f}" for k, v in gains.items())
            + f"; {rank}"
        )
    if mlds2017_fig4 is not None:
        for x in _bn_vs_none(mlds2017_fig4, "test_acc", margin.scale, optim__name="sgd"):
            c.notes.append(_as_note("fixed lr 1e-4 (2017 protocol, not judged)", x))
    return out


@claim(
    "C5",
    statement="With BN the activation matters more than the optimiser; relu+SGD+BN is about as "
    "good as relu+Adam without BN (at the 2017 protocol's lr 1e-4).",
    source="2017 study, Fig. 5",
    experiment="mlds2017_fig5",
    margin=ACCURACY,
    protocol="Decided on the 2017 protocol: the claim is about its Fig. 5 settings, one learning "
    "rate (1e-4) for SGD and Adam alike, so it says nothing about either at its own best "
    "learning rate. Both effects are measured on the same 2 x 2 cells (relu/sigmoid x "
    "SGD/Adam, with BN), per seed.",
    test="final test accuracy after 40,000 steps (lr 1e-4): relu+SGD+BN equivalent to relu+Adam "
    "without BN within {margin:g}; and, with BN, per seed on the cells relu/sigmoid x SGD/Adam, "
    "the activation effect |relu - sigmoid| (averaged over the two optimisers) > the optimiser "
    "effect |Adam - SGD| (averaged over the two activations), paired by seed, margin {margin:g}.",
)
def c5(c, mlds2017_fig5, margin):
    """relu+SGD+BN ~ relu+Adam without BN (the study: BN buys what Adam buys); and with BN,
    |activation effect| > |optimiser effect|, both main effects of the same 2 x 2 cells of one
    seed (an optimiser effect that averages Adam over two activations and SGD over five
    compares different cells)."""
    t = mlds2017_fig5
    a = arm(t, "test_acc", model__activation="relu", optim__name="sgd", model__norm="batch")
    b = arm(t, "test_acc", model__activation="relu", optim__name="adam", model__norm="none")
    label = "relu+SGD+BN ~ relu+Adam, no BN"
    where = {"part": "relu+SGD+BN ~ relu+Adam"}
    out = [Comparison(label, a, b, margin.scale, "equivalent", setting=where)]
    cells = pd.DataFrame(
        {
            (act, opt): arm(
                t, "test_acc", model__activation=act, optim__name=opt, model__norm="batch"
            )
            for act in RELU_SIGMOID
            for opt in ("sgd", "adam")
        }
    )  # one row per seed, columns (activation, optimiser)
    by_act = cells.T.groupby(level=0).mean().T  # averaged over the two optimisers
    by_opt = cells.T.groupby(level=1).mean().T  # averaged over the two activations
    act, opt = by_act["relu"] - by_act["sigmoid"], by_opt["adam"] - by_opt["sgd"]
    label = "with BN: |activation effect| > |optimiser effect| (relu/sigmoid x SGD/Adam)"
    where = {"part": "activation > optimiser"}
    out.append(Comparison(label, act.abs(), opt.abs(), margin.scale, setting=where))
    c.notes.append(
        "with BN, mean over seeds: activation effect relu - sigmoid "
        f"{act.mean():+.4f}, optimiser effect Adam - SGD {opt.mean():+.4f} (final test accuracy)"
    )
    return out


@claim(
    "C6",
    statement="BN hurts at very small batch sizes (batch {batch}).",
    source="2017 study, Fig. 6",
    experiment="mlds2017_fig6",
    optional=["mlds2017_fig6_epochs", "study_ghost"],
    margin=ACCURACY,
    batch=4,
    protocol="Decided on the 2017 protocol (its Fig. 6), with BN evaluated with running "
    "statistics; the equal-epochs companion runs separate batch size from epochs seen.",
    test="final test accuracy at batch {batch}, no BN > BN: faithful runs (sigmoid, SGD lr 0.01 "
    "on the summed loss, 40,000 steps) with BN evaluated with running and with batch "
    "statistics, and the corrected companion (mean loss, equal 5 epochs); margin {margin:g}.",
)
def c6(c, mlds2017_fig6, mlds2017_fig6_epochs, study_ghost, margin, batch):
    """At batch 4, no BN > BN (its batch statistics are noisy), in the faithful runs and in the
    corrected companion if run; the difference at larger batches as notes."""
    no = arm(mlds2017_fig6, "test_acc", model__norm="none", data__batch_size=batch)
    out = []
    for col, what in (
        ("test_acc_running", "running statistics"),
        ("test_acc_batch", "batch statistics"),
    ):
        bn = arm(mlds2017_fig6, col, model__norm="batch", data__batch_size=batch)
        label = f"batch {batch}, faithful, BN with {what}: no BN > BN"
        where = {"protocol": "faithful", "BN evaluated with": what}
        out.append(Comparison(label, no, bn, margin.scale, setting=where))
    if mlds2017_fig6_epochs is None:
        c.notes.append("corrected companion (mlds2017_batch_epochs) not run")
    else:
        no = arm(mlds2017_fig6_epochs, "test_acc", model__norm="none", data__batch_size=batch)
        bn = arm(mlds2017_fig6_epochs, "test_acc", model__norm="batch", data__batch_size=batch)
        label = f"batch {batch}, corrected (mean loss, 5 epochs): no BN > BN"
        where = {"protocol": "equal epochs", "BN evaluated with": "running statistics"}
        out.append(Comparison(label, no, bn, margin.scale, setting=where))
    for bs in (16, 64, 256):  # the sweep's larger batches, where it has them
        no = arm(mlds2017_fig6, "test_acc", model__norm="none", data__batch_size=bs)
        bn = arm(mlds2017_fig6, "test_acc_running", model__norm="batch", data__batch_size=bs)
        if len(no) and len(bn):
            c.notes.append(
                f"batch {bs}: BN - no BN = {bn.mean() - no.mean():+.4f} "
                "(faithful, running statistics)"
            )
    if study_ghost is not None:
        c.notes.append(_ghost_note(study_ghost, "test_acc", "test accuracy", "C22a"))
    return out


@claim(
    "C7",
    statement="Batch Renorm removes most of the small-batch penalty.",
    source="2017 study, Fig. 9; Ioffe 2017",
    experiment="mlds2017_fig9",
    margin=ACCURACY,
    batch=4,
    protocol="Decided on the 2017 protocol (its Fig. 9), with Batch Renorm as published (Ioffe "
    "2017).",
    test="final test accuracy at batch {batch} (faithful Fig. 6 protocol; Batch Renorm with the "
    "paper's r_max/d_max schedule), both evaluated with running statistics: Batch Renorm > BN, "
    "margin {margin:g}; the size of the penalty it removes as a note.",
)
def c7(c, mlds2017_fig9, margin, batch):
    """At batch 4, Batch Renorm > BN (it corrects batch statistics towards the running ones);
    the penalty it removes, and layer norm if run, as notes."""
    no = arm(mlds2017_fig9, "test_acc", model__norm="none", data__batch_size=batch)
    bn = arm(mlds2017_fig9, "test_acc_running", model__norm="batch", data__batch_size=batch)
    rn = arm(mlds2017_fig9, "test_acc_running", model__norm="renorm", data__batch_size=batch)
    c.notes.append(
        f"small-batch penalty of BN (no BN - BN) = {no.mean() - bn.mean():+.4f}; Batch Renorm - "
        f"BN = {rn.mean() - bn.mean():+.4f}; Batch Renorm - no BN = {rn.mean() - no.mean():+.4f}"
    )
    ln = arm(mlds2017_fig9, "test_acc", model__norm="layer", data__batch_size=batch)
    if len(ln):
        c.notes.append(f"layer norm (batch-independent): {ln.mean():.4f} vs BN {bn.mean():.4f}")
    return [Comparison(f"batch {batch}: Batch Renorm > BN", rn, bn, margin.scale)]


@claim(
    "C8",
    statement="BN degrades under train/test distribution mismatch, in its inference mode "
    "(running statistics).",
    source="2017 study (mismatch experiment)",
    experiment="mlds2017_mismatch",
    margin=ACCURACY,
    ratios=(9.0, 19.0, 99.0),
    protocol="Decided on the mismatch study with BN in its inference mode, running statistics "
    "gathered in training: that is how a trained BN network predicts. Normalising by the test "
    "batch's own statistics is another claim (C8b).",
    test="test accuracy after 1,000 steps on digits 0/1 (sigmoid, SGD lr 1e-4), test sets with "
    "1:0 ratios {ratios:g}: no BN > BN, with BN evaluated with its running statistics; margin "
    "{margin:g}.",
)
def c8(c, mlds2017_mismatch, margin, ratios):
    """On skewed test sets, no BN > BN with BN's running statistics (its inference mode)."""
    return _mismatch(mlds2017_mismatch, "test_acc_running", "running statistics", margin, ratios)


@claim(
    "C8b",
    statement="BN normalising by a skewed test batch degrades accuracy: a label-prior shift "
    "moves the batch statistics (Nado et al. 2020).",
    source="2017 study (mismatch experiment); Nado et al. 2020",
    experiment="mlds2017_mismatch",
    margin=ACCURACY,
    ratios=(9.0, 19.0, 99.0),
    protocol="Decided on the mismatch study with BN evaluated with the test batch's statistics "
    "(the study's evaluation): their mean and variance shift with the batch's class mix.",
    test="test accuracy after 1,000 steps on digits 0/1 (sigmoid, SGD lr 1e-4), test sets with "
    "1:0 ratios {ratios:g}, each evaluated as one batch: no BN > BN, with BN normalising by the "
    "test batch's statistics; margin {margin:g}.",
)
def c8b(c, mlds2017_mismatch, margin, ratios):
    """On skewed test sets, no BN > BN normalising by the test batch, whose statistics shift
    with its class mix (the study's mechanism)."""
    return _mismatch(mlds2017_mismatch, "test_acc_batch", "test-batch statistics", margin, ratios)


def _mismatch(t, column, what, margin, ratios) -> list[Comparison]:
    """Per 1:0 ratio of the test set, no BN > BN evaluated by `column`."""
    out = []
    for ratio in ratios:
        no = arm(t, "test_acc", model__norm="none", data__test_ratio=ratio)
        bn = arm(t, column, model__norm="batch", data__test_ratio=ratio)
        label = f"1:0 = {ratio:g}:1, BN with {what}: no BN > BN"
        out.append(Comparison(label, no, bn, margin.scale, setting={"test ratio": ratio}))
    return out
