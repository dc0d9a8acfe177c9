"""The mechanisms studied since the 2017 study, tested by the extra studies (C20-C26, as their
sources say): scale invariance and the effective learning rate (C20: Ioffe & Szegedy Sec. 3.3,
van Laarhoven 2017, Arora et al. 2019), weight decay's equilibrium (C21), ghost batch norm
(C22a, C22b: Hoffer et al. 2017), vanishing gradients in activation space and depth (C23,
C24: Yang et al. 2019), re-estimated statistics under covariate shift (C25: Nado et al. 2020,
Schneider et al. 2020), and BN's benefits with momentum and a schedule (C26)."""

from __future__ import annotations

import math

import pandas as pd

from ...runs.collect import select
from ..margins import ACCURACY, LOSS, MAGNITUDE, STEPS
from ..margins import specific as specific_margin
from ..selection import LR_SELECTION, at_best_lr, require
from ..verdicts import Comparison
from .compare import (
    NORMS2,
    RELU_SIGMOID,
    SHIFT_MODES,
    _as_note,
    _best_lr_note,
    _bn,
    _bn_vs_none,
    _fewer_steps_with_bn,
    _none_bn,
)
from .framework import arm, claim


@claim(
    "C20",
    statement="With BN the weights feeding it are scale-invariant: scaling them by a at "
    "initialisation and their learning rate by a^2 trains the same network, so what their "
    "learning rate sets is the effective learning rate lr/||w||^2.",
    source="Ioffe & Szegedy 2015, Sec. 3.3; van Laarhoven 2017; Arora et al. 2019",
    experiment="study_scale_equiv",
    margin=ACCURACY,
    eff=specific_margin(
        "identity",
        1.05,
        True,
        "the claim is an identity (the same network trains), not an effect of some size: a "
        "rescaled version whose effective learning rate is off by more than 5% is a different "
        "training run, so the equivalence is held to a tighter factor than the magnitude "
        "margin.",
    ),
    protocol="Decided on paired runs built for it (study_scale_equiv): the same seed, data order "
    "and every other parameter, only the weights feeding BN, their learning rate and BN's eps "
    "rescaled; no other protocol isolates the equivalence.",
    test="studies protocol (relu, BN before the activation, SGD lr 0.1 on the mean loss, 5,000 "
    "steps): each rescaled version against the reference of the same seed, final test accuracy "
    "equal within {margin:g} (TOST), for a = 4 and a = 3 with eps x a^2 and for a = 4 and 1/4 "
    "with eps fixed; and for a = 4 and 3 the final effective learning rate lr/||w_j||^2 of "
    "fc1 and fc2 equal within a factor {eff:g}. How far each version's loss history drifts "
    "from the reference's, and whether it is bit for bit the same, as notes.",
)
def c20(c, study_scale_equiv, margin, eff):
    """Rescaled versions against the reference of the same seed: equal accuracy (TOST) and
    equal effective lr; the histories' distance and exactness as notes."""
    versions = (
        (4.0, True, "a = 4, eps x16"),
        (3.0, True, "a = 3, eps x9"),
        (4.0, False, "a = 4, eps fixed"),
        (0.25, False, "a = 1/4, eps fixed"),
    )
    t = require(
        study_scale_equiv, "model.invariant_init_scale", "model.bn_eps", "equiv_max_rel_loss"
    )
    eps0 = t.loc[t["model.invariant_init_scale"] == 1.0, "model.bn_eps"].iloc[0]
    ref = dict(model__invariant_init_scale=1.0)
    out = []
    for a, scaled, label in versions:
        where = dict(model__invariant_init_scale=a, model__bn_eps=eps0 * a * a if scaled else eps0)
        if select(t, **where).empty:
            continue
        acc, acc_ref = arm(t, "test_acc", **where), arm(t, "test_acc", **ref)
        setting = {"version": label, "measure": "test accuracy"}
        out.append(
            Comparison(
                f"{label}: test accuracy ~ reference",
                acc,
                acc_ref,
                margin.scale,
                "equivalent",
                setting=setting,
            )
        )
        if scaled:
            for layer in ("fc1", "fc2"):
                col = f"eff_lr_{layer}_final"
                cmp = Comparison(
                    f"{label}: {layer} effective lr ~ reference",
                    arm(t, col, **where),
                    arm(t, col, **ref),
                    eff.scale,
                    "equivalent",
                    log=True,
                    setting={"version": label, "measure": f"{layer} effective lr"},
                )
                out.append(cmp)
        m = select(t, **where)
        c.notes.append(
            f"{label}: loss history (test and training subset, every 250 steps) bit for bit the "
            f"reference's in {int(m['equiv_exact'].astype(bool).sum())} of {len(m)} seeds; largest "
            f"relative loss difference {m['equiv_max_rel_loss'].max():.2g}, largest test "
            f"accuracy difference {m['equiv_max_acc'].max():.4f}"
        )
    r = select(t, **ref)
    c.notes.append(
        "reference, effective lr lr/||w_j||^2 (mean over units) from half-way to the end: "
        + ", ".join(
            f"{layer} {r[f'eff_lr_{layer}_half'].mean():.3g} -> "
            f"{r[f'eff_lr_{layer}_final'].mean():.3g}"
            for layer in ("fc1", "fc2")
        )
        + f"; growth identity ratio (C1) fc1 {r['scale_ratio_fc1'].mean():.4f}, fc2 "
        f"{r['scale_ratio_fc2'].mean():.4f}"
    )
    return out


@claim(
    "C21",
    statement="With BN, weight decay on the weights feeding BN keeps their effective learning "
    "rate lr/||w||^2 high, and their angular update settles at sqrt(2 lr wd), an equilibrium; "
    "without weight decay the angular update dies out.",
    source="van Laarhoven 2017; Zhang et al. 2019; Li & Arora 2020; Wan et al. 2021",
    experiment="study_wd",
    ratio=MAGNITUDE,
    wd=0.005,
    premise=0.01,
    protocol="Decided on a weight-decay sweep built for it (study_wd), with weight decay on the "
    "weights feeding BN only: the theory is about scale-invariant weights, and gamma, beta and "
    "the output layer are not. Decaying every parameter is kept as a labelled arm (notes).",
    test="studies protocol (relu, SGD lr 0.1 on the mean loss, batch 64) for 10,000 steps, BN "
    "before the activation, weight decay on the weights feeding BN only, for fc1 and fc2: the "
    "angle one step turns a unit's incoming weights (mean over units, averaged over the run's "
    "last quarter) equal to sqrt(2 lr wd) within a factor {ratio:g} at weight decay {wd:g}, "
    "judged only where the weights are still scale-invariant in practice (mean |cos(w_j, g_j)| "
    "over units below {premise:g} at the end: BN's eps breaks the invariance once weight decay "
    "has shrunk the weights), and larger than without weight decay (ratio, margin {ratio}); the "
    "final effective learning rate larger with weight decay {wd:g} than without (ratio, margin "
    "{ratio}). The milder weight decay 5e-4, weight decay on every parameter, test accuracy and "
    "training loss with and without BN, and the norms as notes.",
)
def c21(c, study_wd, ratio, wd, premise):
    """The equilibrium angular update sqrt(2 lr wd) (Wan et al. 2021's spherical motion
    dynamics for plain SGD) where the weights are scale-invariant, its absence without weight
    decay, and the effective lr; weight decay on the weights feeding BN only."""
    t = study_wd.assign(decay=_decay_arm(study_wd))
    bn = t[t["decay"] == "invariant"]
    bn.attrs = study_wd.attrs
    out = []
    for layer in ("fc1", "fc2"):
        col = f"angular_step_{layer}_late"
        turned = arm(bn, col, optim__weight_decay=wd)
        lr = bn.loc[bn["optim.weight_decay"] == wd, "optim.lr"].iloc[0]
        cos = select(bn, optim__weight_decay=wd)[f"grad_w_cos_unit_abs_{layer}"].mean()
        theory = pd.Series(math.sqrt(2 * lr * wd), index=turned.index)
        theory.attrs = turned.attrs
        label = f"{layer}: late angular update at wd {wd:g} ~ sqrt(2 lr wd) = {theory.iloc[0]:.4f}"
        if cos < premise:
            where = {"measure": "angular update ~ sqrt(2 lr wd)", "layer": layer}
            out.append(
                Comparison(
                    label, turned, theory, ratio.scale, "equivalent", log=True, setting=where
                )
            )
        else:
            x = Comparison(label, turned, theory, ratio.scale, "equivalent", log=True)
            c.notes.append(
                _as_note(
                    f"not judged: the premise fails (mean |cos(w_j, g_j)| of {layer} {cos:.3f} >= "
                    f"{premise:g}: not scale-invariant in practice)",
                    x,
                )
            )
        none = arm(bn, col, optim__weight_decay=0.0)
        label = f"{layer}: late angular update, wd {wd:g} > wd 0"
        where = {"measure": "angular update above wd 0", "layer": layer}
        out.append(Comparison(label, turned, none, ratio.scale, log=True, setting=where))
    for layer in ("fc1", "fc2"):
        col = f"eff_lr_{layer}_final"
        a, b = (arm(bn, col, optim__weight_decay=w) for w in (wd, 0.0))
        label = f"{layer}: final effective lr, wd {wd:g} > wd 0"
        where = {"measure": "effective lr above wd 0", "layer": layer}
        out.append(Comparison(label, a, b, ratio.scale, log=True, setting=where))
    for (decay, w), g in t[t["model.norm"] == "batch"].groupby(["decay", "optim.weight_decay"]):
        if w == 0 and decay != "invariant":
            continue  # wd 0: both arms train alike
        pred = math.sqrt(2 * g["optim.lr"].iloc[0] * w)
        c.notes.append(
            f"{DECAY[decay]}, wd {w:g}: late angular update fc1 "
            f"{g['angular_step_fc1_late'].mean():.4f}, fc2 {g['angular_step_fc2_late'].mean():.4f}"
            f" (sqrt(2 lr wd) = {pred:.4f}); mean |cos(w_j, g_j)| fc1 "
            f"{g['grad_w_cos_unit_abs_fc1'].mean():.4f}, fc2 "
            f"{g['grad_w_cos_unit_abs_fc2'].mean():.4f}; fc2 effective lr half-way "
            f"{g['eff_lr_fc2_half'].mean():.3g}, end {g['eff_lr_fc2_final'].mean():.3g}; ||W2|| "
            f"{g['w_fro_fc2_half'].mean():.3g} -> {g['w_fro_fc2_final'].mean():.3g}"
        )
    for decay, g in t.groupby("decay", sort=False):
        by = g.groupby("optim.weight_decay")[["test_acc", "train_loss"]].mean()
        c.notes.append(
            f"{DECAY[decay]}, mean final test accuracy / training loss by weight decay: "
            + ", ".join(f"{w:g}: {r.test_acc:.4f} / {r.train_loss:.4f}" for w, r in by.iterrows())
        )
    return out


# study_wd's arms (config group decay): where weight decay acts
DECAY = {
    "none": "no BN",
    "all": "BN, weight decay on every parameter",
    "invariant": "BN, weight decay on the weights feeding BN only",
}


def _decay_arm(t: pd.DataFrame) -> pd.Series:
    """Each member's key of DECAY: 'none' (no BN), 'all' or 'invariant'
    (optim.weight_decay_on)."""
    on = t.get("optim.weight_decay_on", pd.Series("all", index=t.index))
    return on.where(t["model.norm"] == "batch", "none")


GHOST_PROTOCOL = (
    "Decided on ghost batch norm at one fixed SGD batch of 64 (study_ghost), which changes the "
    "noise of BN's statistics and nothing else; the 2017 batch-size runs change both noises, "
    "and the number of epochs, together."
)


@claim(
    "C22a",
    statement="The noise of BN's batch statistics, apart from SGD's noise, costs accuracy when "
    "BN normalises over very few examples.",
    source="Hoffer et al. 2017; the small-batch claim C6",
    experiment="study_ghost",
    margin=ACCURACY,
    small=4,
    protocol=GHOST_PROTOCOL,
    test="studies protocol (SGD lr 0.1 on the mean loss, batch 64, 5,000 steps), relu and "
    "sigmoid, BN evaluated with running statistics: final test accuracy with statistics over "
    "all 64 examples > over groups of {small} (margin {margin}).",
)
def c22a(c, study_ghost, margin, small):
    """At a fixed SGD batch, tiny BN groups cost accuracy; accuracy and gap by group size as
    notes."""
    out = []
    for act in RELU_SIGMOID:
        full = arm(study_ghost, "test_acc", model__bn_group=0, model__activation=act)
        few = arm(study_ghost, "test_acc", model__bn_group=small, model__activation=act)
        label = f"{act}: test accuracy, BN over 64 > over groups of {small}"
        out.append(Comparison(label, full, few, margin.scale, setting={"activation": act}))
    for act in RELU_SIGMOID:
        g = select(study_ghost, model__activation=act).groupby("model.bn_group")
        c.notes.append(
            f"{act}, by group size (0 = all 64): test accuracy with running / batch statistics, "
            "train - test gap: "
            + "; ".join(
                f"{int(k)}: {v['test_acc_running'].mean():.4f} / {v['test_acc_batch'].mean():.4f}, "
                f"{v['gap'].mean():+.4f}"
                for k, v in g
            )
        )
    return out


@claim(
    "C22b",
    statement="The noise of BN's batch statistics regularises at moderate group sizes (ghost "
    "batch norm): a lower test loss.",
    source="Hoffer et al. 2017; the regularisation claim C18",
    experiment="study_ghost",
    loss=LOSS,
    ghost=16,
    protocol=GHOST_PROTOCOL,
    test="studies protocol (SGD lr 0.1 on the mean loss, batch 64, 5,000 steps), relu and "
    "sigmoid, BN evaluated with running statistics: final test loss with statistics over all 64 "
    "> over groups of {ghost} (ratio, margin {loss}).",
)
def c22b(c, study_ghost, loss, ghost):
    """At a fixed SGD batch, moderate BN groups lower the test loss (Hoffer et al.)."""
    out = []
    for act in RELU_SIGMOID:
        full = arm(study_ghost, "test_loss", model__bn_group=0, model__activation=act)
        grouped = arm(study_ghost, "test_loss", model__bn_group=ghost, model__activation=act)
        label = f"{act}: test loss, BN over 64 > over groups of {ghost}"
        where = {"activation": act}
        out.append(Comparison(label, full, grouped, loss.scale, log=True, setting=where))
    return out


@claim(
    "C23",
    statement="BN fights vanishing gradients: the loss gradient reaches the first hidden "
    "layer's pre-activations about as large as the last hidden layer's.",
    source="seed explainers; 2017 study (Fig. 2); Yang et al. 2019 (the opposite at depth)",
    experiment="mlds2017_fig2",
    optional=["yang2019_depth"],
    figure="activation_grads",
    ratio=MAGNITUDE,
    protocol="Decided in activation space, where vanishing gradients are defined: C2 reads "
    "weight gradients, which also scale with the layer's input, so a larger dL/dW1 does "
    "not say the backpropagated signal is larger.",
    test="per-example ||dL/dz|| at each hidden layer's pre-activation z (the activation's "
    "input), log10 of its ratio between hidden layer 1 and the last hidden layer: |log10 "
    "ratio| without BN > with BN (margin log10 {ratio:g} = 0.097) averaged over steps 1-1,000 of "
    "the 2017 Fig. 2 runs (sigmoid and relu), and at the initial weights in the depth study "
    "(8 and 32 hidden layers, BN in training mode).",
)
def c23(c, mlds2017_fig2, yang2019_depth, ratio):
    """|log ratio| of first- to last-layer activation gradients, smaller with BN: in the 2017
    runs, and at initialisation at depth."""
    t = mlds2017_fig2.assign(
        agrad_abs=require(mlds2017_fig2, "agrad_log_ratio_1k")["agrad_log_ratio_1k"].abs()
    )
    t.attrs["table"] = t.attrs.get("table")
    margin = math.log10(ratio.value)  # |log10 ratio| differences: the magnitude margin in log10
    out = _bn_vs_none(
        t,
        "agrad_abs",
        margin,
        acts=["sigmoid", "relu"],
        flip=True,
        label="{act}, 2017 Fig. 2 runs: |log10 ratio| without BN > with BN",
        setting={"when": "2017 runs, steps 1-1,000"},
    )
    for act in ("sigmoid", "relu"):
        signed = {
            n: arm(t, "agrad_log_ratio_1k", model__norm=n, model__activation=act) for n in NORMS2
        }
        c.notes.append(
            f"{act}, 2017 runs, signed log10(first / last): "
            + ", ".join(f"{_bn(n)} {v.mean():+.3f}" for n, v in signed.items())
        )
    if yang2019_depth is None:
        c.notes.append("yang2019_depth not run")
        return out
    d = yang2019_depth.assign(
        agrad_abs=require(yang2019_depth, "agrad_log_ratio_first")["agrad_log_ratio_first"].abs()
    )
    d.attrs = yang2019_depth.attrs
    for layers in (8, 32):
        out += _bn_vs_none(
            d,
            "agrad_abs",
            margin,
            acts=["sigmoid", "relu"],
            flip=True,
            depth=layers,
            label=f"{{act}}, {layers} layers at initialisation: |log10 ratio| without BN > with BN",
            setting={"when": f"{layers} layers at init"},
        )
    for act in ("relu", "sigmoid"):
        g = select(yang2019_depth, model__activation=act).groupby(["depth", "model.norm"])
        signed = g["agrad_log_ratio_first"].mean()
        c.notes.append(
            f"{act} at initialisation, signed log10(first / last) by depth: "
            + "; ".join(
                f"{k:g}: {_none_bn(signed, (k,), '+.2f')}"
                for k in sorted(yang2019_depth["depth"].unique())
            )
        )
    return out


@claim(
    "C24",
    statement="BN makes deep MLPs trainable where plain ones fail.",
    source="Ioffe & Szegedy 2015; Yang et al. 2019; Santurkar et al. 2018",
    experiment="study_depth",
    optional=["yang2019_depth"],
    selection=LR_SELECTION,
    margin=ACCURACY,
    depths=(8, 16, 32),
    protocol="Decided on a depth sweep with each arm at its own best learning rate, chosen on "
    "held-out images (study_depth): at one learning rate, depth and learning rate are "
    "confounded.",
    test="hidden layers of width 100, 1,000 steps of SGD (batch 64, mean loss) at lr 0.01, 0.1 "
    "or 1, each arm (activation x BN x depth) at its best lr on the held-out images (diverged "
    "= 0): final test accuracy with BN > without, at {depths:d} hidden layers, relu and "
    "sigmoid; margin {margin:g}. Depths 2 and 4, and the end-to-end Jacobian's gain at "
    "initialisation, as notes.",
)
def c24(c, study_depth, yang2019_depth, margin, depths):
    """BN vs none per depth at each arm's best lr."""
    best = at_best_lr(study_depth, extra=("depth",))
    out = []
    for act in RELU_SIGMOID:
        for layers in depths:
            out += _bn_vs_none(
                best,
                "acc0",
                margin.scale,
                acts=[act],
                depth=layers,
                label=f"{{act}}, {layers} layers: BN > no BN",
                setting={"layers": layers},
            )
    for act in RELU_SIGMOID:
        m = select(best, model__activation=act).groupby(["depth", "model.norm"])
        acc, lr = m["acc0"].mean(), m["optim.lr"].first()
        c.notes.append(
            f"{act}, test accuracy (lr chosen) by depth: "
            + "; ".join(
                f"{k:g}: {_none_bn(acc, (k,), '.4f')} (lr {_none_bn(lr, (k,), 'g')})"
                for k in sorted(best["depth"].unique())
            )
        )
    if yang2019_depth is not None and "init_jac_gain_hidden" in yang2019_depth:
        g = yang2019_depth.groupby(["model.activation", "depth", "model.norm"])[
            "init_jac_gain_hidden"
        ].mean()
        for act in RELU_SIGMOID:
            c.notes.append(
                f"{act}, end-to-end Jacobian gain mean(s^2) at initialisation (yang2019_depth; BN "
                "in training mode) by depth: "
                + "; ".join(
                    f"{k:g}: {_none_bn(g, (act, k), '.3g')}"
                    for k in sorted(yang2019_depth["depth"].unique())
                )
            )
    return out


@claim(
    "C25",
    statement="Under covariate shift at test time, re-estimating BN's statistics on the "
    "shifted data recovers accuracy that BN's running statistics lose.",
    source="Nado et al. 2020; Schneider et al. 2020",
    experiment="study_shift",
    margin=ACCURACY,
    shifts=("rotation:45", "noise:0.6", "contrast:0.2"),
    protocol="Decided on test sets shifted by bnlab itself (rotation, pixel noise, lower "
    "contrast), a shift of the inputs; the mismatch study (C8) shifts the labels.",
    test="studies protocol networks (relu and sigmoid, BN before the activation, 5,000 steps of "
    "SGD lr 0.1): accuracy on the shifted test set with BN's statistics re-estimated on the "
    "whole shifted set > with its running statistics, at the strongest shift of each kind "
    "({shifts}); margin {margin:g}. The milder shifts, prediction-time BN on test batches of "
    "64, and the networks without BN as notes.",
)
def c25(c, study_shift, margin, shifts):
    """Adapted > running statistics at the strongest shifts."""
    out = []
    for act in RELU_SIGMOID:
        for entry in shifts:
            where = dict(model__norm="batch", model__activation=act)
            adapted = arm(study_shift, f"shift_acc_adapted_{entry}", **where)
            running = arm(study_shift, f"shift_acc_running_{entry}", **where)
            out.append(
                Comparison(
                    f"{act}, {entry}: re-estimated > running",
                    adapted,
                    running,
                    margin.scale,
                    setting={"activation": act, "shift": entry},
                )
            )
    entries = sorted(
        {col.split("_", 3)[3] for col in study_shift if col.startswith("shift_acc_running_")}
    )
    for act in RELU_SIGMOID:
        bn = select(study_shift, model__norm="batch", model__activation=act)
        no = select(study_shift, model__norm="none", model__activation=act)
        c.notes.append(
            f"{act}, mean test accuracy, BN running / re-estimated / per batch of 64; no BN: "
            + "; ".join(
                f"{e}: "
                + " / ".join(f"{bn[f'shift_acc_{m}_{e}'].mean():.3f}" for m in SHIFT_MODES)
                + f"; {no[f'shift_acc_running_{e}'].mean():.3f}"
                for e in entries
            )
        )
    return out


@claim(
    "C26",
    statement="BN's benefits hold with SGD with momentum and a learning-rate schedule, the "
    "setup people use: better accuracy and faster training.",
    source="the setups of Ioffe & Szegedy 2015 and later practice; C4 and C19 under plain SGD",
    experiment="study_momentum",
    optional=["study_tuned"],
    selection=LR_SELECTION,
    margin=ACCURACY,
    ratio=STEPS,
    target=0.97,
    protocol="Decided on study_tuned's comparison with SGD momentum 0.9 and a cosine schedule "
    "(study_momentum), each arm at its own best learning rate chosen on held-out images.",
    test="10,000 steps (batch 64, mean loss), SGD momentum 0.9, cosine schedule, lr 0.003-1, "
    "each arm at its best lr on the held-out images (diverged = 0), relu and sigmoid, BN "
    "before the activation vs no BN: final test accuracy BN > no BN (margin {margin}), and "
    "steps to {target:g} test accuracy no BN > BN (ratio, margin {ratio}). study_tuned's "
    "plain-SGD results (C4, C19) as notes, to say what changes.",
)
def c26(c, study_momentum, study_tuned, margin, ratio, target):
    """C4 and C19 again with momentum and a cosine schedule."""
    best = at_best_lr(study_momentum)
    c.notes.append(_best_lr_note(best))
    out = _bn_vs_none(
        best,
        "acc0",
        margin.scale,
        acts=RELU_SIGMOID,
        label="{act}: accuracy BN > no BN",
        setting={"measure": "accuracy"},
    )
    out += _fewer_steps_with_bn(best, target, ratio)
    if study_tuned is not None:
        plain = at_best_lr(study_tuned)
        plain = plain[plain["model.placement"] != "after"]
        for x in _bn_vs_none(plain, "acc0", margin.scale, acts=RELU_SIGMOID):
            c.notes.append(_as_note("plain SGD, constant lr (study_tuned, C4)", x))
        for x in _fewer_steps_with_bn(plain, target, ratio):
            c.notes.append(_as_note("plain SGD, constant lr (study_tuned, C19)", x))
    return out
