"""The claims of the BN explainers the study started from (the "seed explainers", as their
sources say): C13 (insensitivity to the initial scale), C14 (BN before the activation), C15a
and C15b (dropout with BN; also Li et al. 2019), C16 (the bias before BN), C17 (the order of
mini-batches and the running statistics), C18 (mild regularisation)."""

from __future__ import annotations

import pandas as pd
from scipy import stats

from .. import verdicts
from ..margins import ACCURACY, LOSS, MAGNITUDE
from ..selection import LR_SELECTION, at_best_lr, with_acc0
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
)
from .framework import arm, claim


@claim(
    "C13",
    statement="BN reduces sensitivity to the weight-initialisation scale (at a fixed lr 0.1).",
    source="seed explainers",
    experiment="study_init_scale",
    margin=ACCURACY,
    scales=(0.1, 0.3, 3.0, 10.0),
    protocol="Decided on the interaction across initial scales (study_init_scale), at one fixed "
    "learning rate (0.1) for every scale and norm: BN > no BN at one scale would also hold if "
    "BN were simply better everywhere. Tuning the lr per (scale, norm) could change the "
    "answer: with BN a larger initial scale lowers the effective learning rate.",
    test="test accuracy after 5,000 steps (studies protocol: SGD at a fixed lr 0.1, relu) with "
    "every initial weight scaled by {scales[0]:g}-{scales[3]:g}: the interaction, i.e. the "
    "accuracy lost against scale 1 without BN minus the accuracy lost with BN, per scale and "
    "paired by seed, > 0; margin {margin:g}.",
)
def c13(c, study_init_scale, margin, scales):
    """Sensitivity is an interaction: at each scale away from 1, the accuracy each norm loses
    against its own scale-1 runs (diverged = 0), larger without BN. (BN > no BN at one scale
    would also hold if BN were simply better everywhere.) BN's own loss at large scales is its
    effective learning rate: scaling the weights feeding BN by a divides lr/||w||^2 by a^2."""
    t = with_acc0(study_init_scale)
    out = []
    base = {n: arm(t, "acc0", model__norm=n, model__init_scale=1.0) for n in NORMS2}
    for s in scales:
        drop = {n: base[n] - arm(t, "acc0", model__norm=n, model__init_scale=s) for n in NORMS2}
        label = f"init scale {s:g}: accuracy lost without BN > lost with BN"
        where = {"init scale": s}
        out.append(Comparison(label, drop["none"], drop["batch"], margin.scale, setting=where))
    for n in NORMS2:
        g = t[t["model.norm"] == n].groupby("model.init_scale")["acc0"].mean()
        c.notes.append(
            f"{_bn(n)}: mean accuracy per scale "
            + ", ".join(f"{x:g}: {v:.4f}" for x, v in g.items())
            + f" (range {g.max() - g.min():.4f})"
        )
    w = t[t["model.norm"] == "batch"].groupby("model.init_scale")["w2_mean_abs_start"].mean()
    c.notes.append(
        "with BN the effective lr of the weights feeding BN is lr/||w||^2: initial mean |W2| "
        + ", ".join(f"{x:g}: {v:.3g}" for x, v in w.items())
        + " (scale 10: a 100x smaller effective lr)"
    )
    return out


@claim(
    "C14",
    statement="BN before the activation (the BN paper's placement) is better than after it.",
    source="seed explainers (debated: some recommend after)",
    experiment="study_tuned",
    optional=["study_placement"],
    selection=LR_SELECTION,
    margin=ACCURACY,
    protocol="Decided on each placement at its own best learning rate (study_tuned): at one fixed "
    "learning rate a placement may just prefer another one; study_placement's fixed-lr "
    "results for every activation are notes.",
    test="final test accuracy after 20,000 steps (studies protocol) with each placement at its "
    "own best learning rate of 0.03-3, chosen on the held-out images (diverged = 0): BN before "
    "vs after the activation, relu and sigmoid, either way (before > after supported, after > "
    "before contradicted); margin {margin:g}. Every activation at the fixed lr 0.1 (5,000 "
    "steps) as notes: a placement may just prefer another learning rate.",
)
def c14(c, study_tuned, study_placement, margin):
    """Per activation, BN before > BN after it in accuracy, each at its own best lr; the
    placement each interval favours as a note (the explainers disagree), and the fixed-lr
    result of every activation."""
    best = at_best_lr(study_tuned)
    c.notes.append(_best_lr_note(best))
    out = []
    for act in RELU_SIGMOID:
        b = arm(best, "acc0", model__placement="before", model__activation=act)
        a = arm(best, "acc0", model__placement="after", model__activation=act)
        if len(a) and len(b):
            where = {"activation": act}
            out.append(Comparison(f"{act}: before > after", b, a, margin.scale, setting=where))
    better = {}
    for cmp in out:
        _, lo, hi, _ = cmp.diff()
        which = "before" if lo > 0 else "after" if hi < 0 else "no detectable difference"
        better.setdefault(which, []).append(cmp.label.split(":")[0])
    c.notes.append(
        "better placement per activation at the best learning rates: "
        + "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(better.items()))
    )
    for act in ACTS if study_placement is not None else []:
        b = arm(study_placement, "test_acc", model__placement="before", model__activation=act)
        a = arm(study_placement, "test_acc", model__placement="after", model__activation=act)
        if len(a) and len(b):
            cmp = Comparison(f"{act}: before > after", b, a, margin.scale)
            c.notes.append(_as_note("fixed lr 0.1, 5,000 steps (not judged)", cmp))
    return out


@claim(
    "C15a",
    statement="Dropout combined with BN hurts ('never apply dropout with BN'): it costs a "
    "network with BN more accuracy than one without.",
    source="seed explainer; Li et al. 2019",
    experiment=["study_dropout", "study_lr"],
    margin=ACCURACY,
    protocol="Decided on study_dropout against study_lr's runs without dropout; the variance-shift "
    "mechanism is tested by removing it alone (population statistics gathered with "
    "dropout off).",
    test="test accuracy after 5,000 steps (studies protocol, relu, dropout 0.5): the accuracy "
    "lost to dropout is larger with BN than without, i.e. BN's gain over no BN (per seed, within "
    "a table) is larger without dropout (study_lr at lr 0.1) than with it (Welch across the two "
    "tables, margin {margin}), for dropout after the activation and directly before BN. The "
    "mechanism, as notes: Li et al.'s variance shift is removed by evaluating with population "
    "statistics gathered with dropout off (instead of the running statistics, gathered with it "
    "on); if that recovers nothing, dropout's cost is underfitting.",
)
def c15a(c, study_dropout, study_lr, margin):
    """Dropout's cost is larger with BN, whose test-time variance it shifts (Li et al.): BN's
    gain per seed is larger in study_lr at lr 0.1 (no dropout) than with dropout, per placement
    of the dropout. A seed starts from the same initial weights in both tables (their
    w2_mean_abs_start agree seed by seed), but verdicts.Comparison pairs seeds only within one
    sweep table, so the two tables are compared with Welch's test, which ignores that pairing."""
    bn0 = arm(study_lr, "test_acc", model__norm="batch", optim__lr=0.1)
    no0 = arm(study_lr, "test_acc", model__norm="none", optim__lr=0.1)
    out = []
    for where in ("after_act", "before_bn"):
        bnd = arm(study_dropout, "test_acc", model__norm="batch", model__dropout_at=where)
        nod = arm(study_dropout, "test_acc", model__norm="none", model__dropout_at=where)
        label = f"dropout {where}: BN - no BN without dropout > with it (dropout costs BN more)"
        gain0, gain = (bn0 - no0).dropna(), (bnd - nod).dropna()
        out.append(
            Comparison(label, gain0, gain, margin.scale, paired=False, setting={"dropout": where})
        )
        vs = arm(study_dropout, "var_shift_bn2_final", model__norm="batch", model__dropout_at=where)
        if len(vs.dropna()):  # all NaN only if every BN member diverged (arm checks the rest)
            c.notes.append(f"dropout {where} with BN: variance shift at bn2 = {vs.mean():.3g}")
        c.notes.append(_dropout_mechanism(study_dropout, where, margin.scale))
    return out


@claim(
    "C15b",
    statement="Dropout only after the last BN is harmless.",
    source="seed explainer; Li et al. 2019",
    experiment=["study_dropout", "study_lr"],
    margin=ACCURACY,
    protocol="Decided on study_dropout's dropout before the output layer against study_lr's BN "
    "runs without dropout.",
    test="test accuracy after 5,000 steps (studies protocol, relu, dropout 0.5): dropout only "
    "before the output layer with BN equivalent to BN without dropout (study_lr at lr 0.1) "
    "within {margin} (Welch across the two tables).",
)
def c15b(c, study_dropout, study_lr, margin):
    """Dropout after the last BN ~ no dropout, with BN."""
    bn0 = arm(study_lr, "test_acc", model__norm="batch", optim__lr=0.1)
    fin = arm(study_dropout, "test_acc", model__norm="batch", model__dropout_at="final")
    label = "dropout only after the last BN ~ BN without dropout"
    return [Comparison(label, fin, bn0, margin.scale, "equivalent", paired=False)]


def _dropout_mechanism(d: pd.DataFrame, where: str, margin: float) -> str:
    """Does removing the variance shift (population statistics with dropout off) recover the
    accuracy dropout costs BN? The recovered accuracy with its interval, and the fit: a
    training accuracy no higher than the test accuracy means the network underfits."""
    bn = dict(model__norm="batch", model__dropout_at=where)
    pop, run = arm(d, "test_acc_population", **bn), arm(d, "test_acc_running", **bn)
    cmp = Comparison("population (dropout off) > running statistics", pop, run, margin)
    mean, lo, hi, _ = cmp.diff()
    gap = (arm(d, "train_acc", **bn) - arm(d, "test_acc", **bn)).mean()
    verdict = (
        "removing the variance shift recovers accuracy"
        if lo > 0
        else "removing the variance shift recovers nothing detectable: dropout's cost here is "
        "underfitting, not variance shift"
        if hi < margin
        else "the seeds spread too much to tell whether removing the variance shift helps"
    )
    return (
        f"dropout {where} with BN, {cmp.label}: {mean:+.4f} [{lo:+.4f}, {hi:+.4f}]; train - test "
        f"accuracy {gap:+.4f}; {verdict}"
    )


@claim(
    "C16",
    statement="The bias before BN is redundant (beta subsumes it).",
    source="seed explainer",
    experiment="study_bias",
    margin=ACCURACY,
    protocol="Decided on study_bias, and the exact identity that the gradient of a bias before BN "
    "is zero (a test of bnlab's layers).",
    test="test accuracy after 5,000 steps (studies protocol) with and without the bias of the "
    "linear layers feeding BN: equivalent within {margin:g}.",
)
def c16(c, study_bias, margin):
    """With ~ without the bias before BN, per activation: BN subtracts the batch mean, which
    removes any constant the bias adds."""
    out = []
    for act in RELU_SIGMOID:
        on = arm(study_bias, "test_acc", model__bias_before_norm=True, model__activation=act)
        off = arm(study_bias, "test_acc", model__bias_before_norm=False, model__activation=act)
        label = f"{act}: with bias ~ without bias"
        out.append(
            Comparison(label, on, off, margin.scale, "equivalent", setting={"activation": act})
        )
    return out


@claim(
    "C17",
    statement="The order of mini-batches changes the learned running statistics, but the effect "
    "averages out under shuffling.",
    source="seed explainer",
    experiment="study_order",
    optional=["study_lr", "running_stats.csv"],
    spread=MAGNITUDE,
    orders=10,
    batches=1000,
    protocol="Decided by an intervention that changes the order alone: with the weights frozen at "
    "the end of training, BN's running statistics are recomputed over each member's last "
    "batches in shuffled orders, and the accuracy's spread across those orders is judged "
    "against its spread across seeds (its share of the variance), not against a fixed "
    "accuracy margin: 'averages out' means the order adds little to the variation a run "
    "has anyway. Comparing members whose weights also diverge measured the spread of the "
    "weights, not of the order.",
    test="BN, studies protocol, 5,000 steps: with the final weights frozen, the running "
    "statistics recomputed over each member's last {batches:g} training batches in {orders:g} "
    "random orders, and the test set evaluated with each: the SD of the test accuracy across "
    "seeds (study_order's members: the same initial weights, each its own data order) > the "
    "SD across orders (one value per member), as a ratio, margin {spread}. The seeds' SD is one "
    "estimate, taken as known; its 95% interval is a note. How much the order moves the "
    "running statistics themselves, and the precise-BN effect (the accuracy with statistics "
    "recomputed from the frozen final weights minus with the run's moving average), as notes.",
)
def c17(c, study_order, study_lr, running_stats, spread, orders, batches):
    """Order alone: the accuracy's SD across shuffled orders of the same last batches (frozen
    weights) is a small share of its SD across seeds. The order's effect on the statistics,
    the precise-BN effect and the comparison across members whose weights differ, as notes."""
    by_order = arm(study_order, "reorder_acc_sd", model__norm="batch")
    acc = arm(study_order, "test_acc", model__norm="batch")
    by_seed = pd.Series(acc.std(), index=by_order.index)
    by_seed.attrs = by_order.attrs
    label = "test accuracy, SD across seeds > SD across orders (frozen weights)"
    out = [Comparison(label, by_seed, by_order, spread.scale, log=True)]
    n = acc.notna().sum()  # the seeds' SD: its chi-square 95% interval, for the note
    lo, hi = (acc.std() * (n - 1) ** 0.5 / stats.chi2.ppf(q, n - 1) ** 0.5 for q in (0.975, 0.025))
    c.notes.append(
        f"SD across seeds {acc.std():.4f} (95% interval {lo:.4f}-{hi:.4f}, {n} seeds), mean SD "
        f"across orders {by_order.mean():.4f}: the order's share of the variance "
        f"{(by_order**2).mean() / acc.var():.3f}"
    )
    shift = arm(study_order, "reorder_acc_shift", model__norm="batch")
    c.notes.append(
        "precise-BN effect, not the order's (statistics recomputed from the frozen final weights, "
        "mean over orders, minus the run's moving average): test accuracy "
        f"{shift.mean():+.4f} (per member {shift.min():+.4f} to {shift.max():+.4f})"
    )
    for layer in ("bn1", "bn2"):
        for stat in ("mean", "log_var"):
            r = arm(study_order, f"reorder_{stat}_ratio_{layer}", model__norm="batch")
            c.notes.append(
                f"{layer} running {stat}: SD across orders = {r.mean():.3g} x the SD across "
                "units (mean over members)"
            )
    if running_stats is not None:  # written only where members kept their model.pt
        for _, r in running_stats[running_stats["sweep"] == "study_order"].iterrows():
            c.notes.append(
                f"{r['layer']} running {r['stat']}: SD across members (same initial weights, "
                f"weights diverge with the order) = {r['ratio']:.2f} x the SD across units"
            )
    if study_lr is not None:
        own = arm(study_lr, "test_acc", model__norm="batch", optim__lr=0.1)
        c.notes.append(
            f"BN, accuracy SD across members: {acc.std():.4f} (same init, data order differs) "
            f"vs {own.std():.4f} (init and order differ; study_lr at lr 0.1)"
        )
    return out


@claim(
    "C18",
    statement="BN adds a mild regularisation effect: a smaller train/test gap.",
    source="seed explainers",
    experiment="study_tuned",
    optional=["study_lr", "mlds2017_fig4", "study_ghost"],
    selection=LR_SELECTION,
    margin=ACCURACY,
    loss=LOSS,
    fit=0.02,
    protocol="Decided on matched fit at each arm's own best learning rate (study_tuned): at the "
    "end of a fixed-length run the arm that fits the training set better has the larger "
    "gap whatever regularises.",
    test="at matched fit: the first evaluation whose training-subset loss is <= {fit:g} (studies "
    "protocol, 20,000 steps, each arm at its own best learning rate, chosen on the held-out "
    "images), BN before the activation vs no BN, relu and sigmoid: test loss without BN > with "
    "BN (ratio, margin {loss}) and train-test accuracy gap without BN > with BN (margin "
    "{margin}). study_lr's fixed learning rates and the gaps at the end of the 2017 runs as "
    "notes: at the end of a fixed-length run the arms fit the training set to different "
    "degrees.",
)
def c18(c, study_tuned, study_lr, mlds2017_fig4, study_ghost, margin, loss, fit):
    """A regulariser shows at equal fit: BN and no BN compared at the first evaluation where
    each has fit the training subset to loss <= fit (at the end of a fixed-length run the arm
    that fits better has the larger gap, whatever regularises)."""
    best = at_best_lr(study_tuned)
    best = best[best["model.placement"] != "after"]
    c.notes.append(_best_lr_note(best))
    out = []
    for act in RELU_SIGMOID:
        for measure, what, m in (
            ("test_loss_at_fit", "test loss", loss),
            ("gap_at_fit", "gap", margin),
        ):
            where = dict(sometimes=True, model__activation=act)
            no = arm(best, measure, model__norm="none", **where)
            bn = arm(best, measure, model__norm="batch", **where)
            label = f"{act}, {what} at matched fit: without BN > with BN"
            out.append(
                Comparison(
                    label,
                    no,
                    bn,
                    m.scale,
                    log=m.ratio,
                    setting={"activation": act, "measure": what},
                )
            )
        steps = {
            n: arm(best, "fit_step", sometimes=True, model__norm=n, model__activation=act)
            for n in NORMS2
        }
        c.notes.append(
            f"{act}, members reaching training loss {fit:g} at their best lr: "
            + ", ".join(
                f"{_bn(n)} {v.notna().sum()} of {len(v)}"
                + (f" (mean step {v.mean():.0f})" if v.notna().any() else "")
                for n, v in steps.items()
            )
        )
    for lr in sorted(study_lr["optim.lr"].unique()) if study_lr is not None else []:
        for measure, what, m in (
            ("test_loss_at_fit", "test loss", loss),
            ("gap_at_fit", "gap", margin),
        ):
            no = arm(study_lr, measure, sometimes=True, model__norm="none", optim__lr=lr)
            bn = arm(study_lr, measure, sometimes=True, model__norm="batch", optim__lr=lr)
            if min(no.notna().sum(), bn.notna().sum()) >= verdicts.MIN_VALUES:
                label = f"{what} at matched fit: without BN > with BN"
                cmp = Comparison(label, no, bn, m.scale, log=m.ratio)
                c.notes.append(_as_note(f"study_lr, relu, lr {lr:g} (not judged)", cmp))
    if mlds2017_fig4 is not None:
        for x in _bn_vs_none(mlds2017_fig4, "gap", margin.scale, flip=True, optim__name="sgd"):
            c.notes.append(_as_note("end of the 2017 runs (not matched, not judged)", x))
    if study_ghost is not None:
        c.notes.append(_ghost_note(study_ghost, "test_loss", "final test loss", "C22b"))
        c.notes.append(_ghost_note(study_ghost, "gap", "train - test accuracy gap", "C22b"))
    return out
