"""Draw the published figures from collected sweeps: `bnlab figures NAME|all`.

Each figure reads the sweeps it needs from RESULTS/sweeps (collecting a sweep first when its
runs.parquet is missing) and writes RESULTS/figures/NAME.png and NAME.svg (the Fig. 3
animation also NAME.gif). A figure that cannot be drawn (its sweep has no runs, a measure it
shows is missing) is named with the reason, and the command exits 1.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import plots, tables
from .claims import at_best_lr
from .collect import acc_or_zero, read_tables, select
from .collect import main as collect_main
from .experiments import EXPERIMENTS, REPRODUCTION, experiments_of, figures_of, sweep
from .records import atomic_path

DONE = ("finished", "diverged")


class Results:
    """Collected tables of the sweeps under RESULTS/sweeps, loaded once each."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._cache: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}

    def load(self, experiment: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(runs, history) of an experiment's sweep, members that finished or diverged only."""
        name = sweep(experiment)
        if name not in self._cache:
            folder = self.root / "sweeps" / name
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"no sweep folder {folder}; {how_to_train(name, self.root)}"
                )
            try:
                runs, history = read_tables(folder)
            except FileNotFoundError:
                if collect_main([str(folder)]) != 0:
                    raise FileNotFoundError(
                        f"no runs in {folder}; {how_to_train(name, self.root)}"
                    ) from None
                runs, history = read_tables(folder)
            self._cache[name] = (runs[runs["status"].isin(DONE)], history)
        return self._cache[name]


def how_to_train(sweep: str, root: Path) -> str:
    """What to run to get a sweep's runs, and how long it took in the last reproduction (the
    committed tables hold one row per member, not the per-step curves figures draw)."""
    names = [e for e in experiments_of(sweep) if EXPERIMENTS[e].reproduce] or [sweep]
    times = root / "tables" / "reproduction_times.csv"
    took = ""
    if times.exists():
        t = pd.read_csv(times).set_index("experiment")["job_s"]
        minutes = sum(t.get(n, 0.0) for n in names) / 60 / 2  # two jobs at a time
        took = f" (about {max(1, round(minutes))} min on 2 cores)" if minutes else ""
    return (
        f"train it first: bnlab reproduce --only {' '.join(names)}{took}; the committed "
        "results/tables hold final numbers per member, not the per-step curves figures need"
    )


def _steps(history: pd.DataFrame, metric: str, wanted: list[int]) -> list[int]:
    """The probed steps of `metric` closest to the wanted ones."""
    have = sorted(history.loc[history["metric"] == metric, "step"].unique())
    return sorted({min(have, key=lambda s: abs(s - w)) for w in wanted}) if have else wanted


def mlds2017_fig1(res: Results):
    """Mean |W2| vs step, sigmoid, SGD, BN vs no BN (the 2017 study's Fig. 1)."""
    runs, hist = res.load("mlds2017_fig1")
    runs = select(runs, optim__name="sgd", model__activation="sigmoid")
    return plots.curves(
        runs,
        hist,
        "w_mean_abs",
        split="train",
        layer="fc2",
        ylabel="mean |W2| (hidden-to-hidden weights)",
        title="2017 study Fig. 1: weight magnitude, sigmoid, SGD lr 1e-4 (summed loss)",
    )


def mlds2017_fig2(res: Results):
    """Mean |dL/dW1| at every step of the first 1,000, relu and sigmoid (Fig. 2)."""
    runs, hist = res.load("mlds2017_fig2")
    return plots.curves(
        runs,
        hist,
        "grad_mean_abs",
        split="train",
        layer="fc1",
        facet="model.activation",
        logy=True,
        ylabel="mean |dL/dW1| (summed loss)",
        title="2017 study Fig. 2: first-layer gradient magnitude, every step, SGD lr 1e-4",
    )


FIG3_PANELS = [("relu", "fc1"), ("sigmoid", "fc2")]


def mlds2017_fig3(res: Results):
    """Layer-Jacobian singular-value histograms at steps 100-900, per-sample and the study's
    batch-sum variant (Fig. 3)."""
    runs, hist = res.load("mlds2017_fig3")
    steps = _steps(hist, "jac_hist_00", [100, 300, 700, 900])
    fig = plt.figure(figsize=(3.2 * len(steps), 11.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1])
    for sub, prefix, variant in (
        (top, "jac", "per-sample Jacobian, BN in eval mode (well defined)"),
        (bottom, "jacsum", "the 2017 study's batch-sum quantity, BN in train mode"),
    ):
        plots.jacobian_histograms(runs, hist, FIG3_PANELS, steps, prefix, variant, fig=sub)
    return fig


def mlds2017_fig3_gif(res: Results):
    """Fig. 3's histograms over every probed step, as an animation."""
    runs, hist = res.load("mlds2017_fig3")
    return plots.jacobian_animation(runs, hist, FIG3_PANELS)


def mlds2017_fig4(res: Results):
    """Test accuracy vs step, 5 activations x BN on/off, SGD (Fig. 4)."""
    runs, hist = res.load("mlds2017_fig4")
    return plots.curves(
        select(runs, optim__name="sgd"),
        hist,
        "acc",
        facet="model.activation",
        ncols=5,
        ylabel="test accuracy",
        title="2017 study Fig. 4: activations x BN, SGD lr 1e-4 (summed loss)",
        ylim=(0.5, 1.0),
    )


def mlds2017_fig5(res: Results):
    """Test accuracy over the first 5,000 steps, relu/sigmoid x SGD/Adam x BN (Fig. 5)."""
    runs, hist = res.load("mlds2017_fig5")
    return plots.curves(
        select(runs, model__activation=["relu", "sigmoid"]),
        hist,
        "acc",
        facet="model.activation",
        style="optim.name",
        xmax=5000,
        ylabel="test accuracy",
        title="2017 study Fig. 5: SGD vs Adam x BN, lr 1e-4, first 5,000 of 40,000 steps",
        ylim=(0.5, 1.0),
    )


def _final_modes(runs: pd.DataFrame, modes=("running", "batch")) -> pd.DataFrame:
    """Runs in long format over BN evaluation modes: column 'eval' and 'acc' (no-BN members
    have one accuracy, repeated under every mode)."""
    out = []
    for mode in modes:
        col = f"test_acc_{mode}"
        acc = runs[col].fillna(runs["test_acc"]) if col in runs else runs["test_acc"]
        out.append(runs.assign(eval=f"BN with {mode} statistics", acc=acc))
    return pd.concat(out, ignore_index=True)


def mlds2017_fig6(res: Results):
    """Batch size x BN: faithful curves, endpoints by BN evaluation mode, and the corrected equal-
    epochs companion (Fig. 6)."""
    runs, hist = res.load("mlds2017_fig6")
    runs = select(runs, model__norm=["none", "batch"])
    fig = plt.figure(figsize=(17, 8.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.0, 1.0])
    plots.curves(
        runs,
        hist,
        "acc",
        facet="data.batch_size",
        ylabel="test accuracy",
        ylim=(0.7, 1.0),
        fig=top,
    )
    top.suptitle("Faithful: sigmoid, SGD lr 0.01 on the summed loss, 40,000 steps per batch size")
    left, right = bottom.subfigures(1, 2, width_ratios=[2, 1])
    plots.final_points(
        _final_modes(runs),
        "data.batch_size",
        "acc",
        facet="eval",
        logx=True,
        ylabel="final test accuracy",
        xlabel="batch size",
        fig=left,
    )
    left.suptitle("Faithful runs, end of training: BN evaluated two ways")
    try:
        eruns, _ = res.load("mlds2017_fig6_epochs")
        plots.final_points(
            eruns,
            "data.batch_size",
            "test_acc",
            logx=True,
            ylabel="final test accuracy",
            xlabel="batch size",
            fig=right,
        )
        right.suptitle("Corrected: mean loss, lr 0.64, 5 epochs each")
    except (FileNotFoundError, ValueError) as e:
        print(f"  mlds2017_fig6: companion panel skipped: {e}")
    fig.suptitle("2017 study Fig. 6: batch size x BN (BN curves use running statistics)")
    return fig


def mlds2017_fig9(res: Results):
    """Batch 4: no BN vs BN vs Batch Renorm vs layer norm, curves and endpoints by evaluation mode
    (Fig. 9)."""
    runs, hist = res.load("mlds2017_fig9")
    runs = select(runs, **{"data.batch_size": 4})
    fig = plt.figure(figsize=(12, 4.6), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1.2, 1])
    plots.curves(runs, hist, "acc", ylabel="test accuracy", ylim=(0.7, 1.0), fig=left)
    left.suptitle("test accuracy (running statistics)")
    modes = _final_modes(runs, ("running", "population", "batch"))
    modes = modes.assign(eval=modes["eval"].str.replace("BN with ", "").str.replace(" st", "\nst"))
    plots.final_points(
        modes, "eval", "acc", xlabel="evaluation statistics", ylabel="final test acc", fig=right
    )
    right.suptitle("end of training, by evaluation statistics")
    fig.suptitle(
        "2017 study Fig. 9: batch 4, sigmoid, SGD lr 0.01 (summed loss): BN vs Batch Renorm"
    )
    return fig


def mlds2017_mismatch(res: Results):
    """Accuracy on skewed 0/1 test sets, BN with batch vs running statistics."""
    runs, _ = res.load("mlds2017_mismatch")
    return plots.final_points(
        _final_modes(runs),
        "data.test_ratio",
        "acc",
        facet="eval",
        logx=True,
        sharey=True,
        ylabel="test accuracy after 1,000 steps",
        xlabel="1:0 ratio of the test set",
        title="Mismatch: trained on digits 0/1, tested on skewed 0/1 sets (sigmoid, SGD)",
    )


def ioffe2015_fig1(res: Results):
    """Ioffe & Szegedy Fig. 1: accuracy, and the 15/50/85th percentiles of a last-layer unit's
    input."""
    runs, hist = res.load("ioffe2015_fig1")
    fig = plt.figure(figsize=(13, 4.4), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1, 2])
    plots.curves(runs, hist, "acc", ylabel="test accuracy", ylim=(0.85, 1.0), fig=left)
    left.suptitle("(a) test accuracy")
    layer = sorted(n for n in hist["layer"].unique() if n.startswith("act"))[-1]
    plots.percentile_bands(runs, hist, layer, fig=right)
    right.suptitle(f"(b, c) 15/50/85th percentiles of the sigmoid input, {layer} unit 0")
    fig.suptitle("Ioffe & Szegedy 2015 Fig. 1: 3x100 sigmoid MLP, batch 60, SGD lr 0.5 (mean)")
    return fig


def santurkar2018_ics(res: Results):
    """Gradient ICS (relative l2, cosine) and distributional ICS of the layer-2 input vs step."""
    runs, hist = res.load("santurkar2018_ics")
    runs = select(runs, optim__name="sgd", model__activation=["relu", "sigmoid"])
    fig = plt.figure(figsize=(13, 12), layout="constrained")
    subs = fig.subfigures(3, 1)
    for sub, metric, split, ylabel, logy in (
        (subs[0], "ics_grad_rel", "train", "||G - G'|| / ||G||", True),
        (subs[1], "ics_grad_cos", "train", "cos(G, G')", False),
        (subs[2], "ics_kl", "test", "Gaussian KL vs previous probe", True),
    ):
        plots.curves(
            runs,
            hist,
            metric,
            split=split,
            layer="fc2",
            facet="model.activation",
            logy=logy,
            ylabel=f"{ylabel} (layer 2)",
            fig=sub,
        )
    fig.suptitle(
        "Santurkar et al. ICS on the 2017 study's SGD runs: gradient ICS (rows 1-2) and "
        "distributional ICS of the layer-2 input (row 3)"
    )
    return fig


def santurkar2018_landscape(res: Results):
    """Loss range, gradient predictiveness and beta-smoothness along the gradient vs step."""
    runs, hist = res.load("santurkar2018_landscape")
    runs = select(runs, model__activation=["relu", "sigmoid"])
    keys = ["run", "seed", "step", "split", "layer"]
    lmax = hist[hist["metric"] == "landscape_loss_max"].set_index(keys)["value"]
    lmin = hist[hist["metric"] == "landscape_loss_min"].set_index(keys)["value"]
    loss_range = (lmax - lmin).reset_index().assign(metric="landscape_loss_range")
    hist = pd.concat([hist, loss_range], ignore_index=True)
    fig = plt.figure(figsize=(13, 12), layout="constrained")
    subs = fig.subfigures(3, 1)
    for sub, metric, ylabel in (
        (subs[0], "landscape_loss_range", "loss range (max - min) along -eta g"),
        (subs[1], "landscape_grad_diff_max", "max ||grad(theta - eta g) - g||"),
        (subs[2], "landscape_beta", "effective beta-smoothness"),
    ):
        plots.curves(
            runs,
            hist,
            metric,
            split="train",
            layer="grad",
            facet="model.activation",
            style="optim.name",
            logy=True,
            ylabel=ylabel,
            fig=sub,
        )
    fig.suptitle(
        "Santurkar et al. loss-landscape measures along the gradient, 2017 study's runs "
        "(lr 1e-4, summed loss)"
    )
    return fig


def santurkar2018_landscape_lr(res: Results):
    """Curvature and the first-order overshoot along the gradient vs step, at lr 0.1-1."""
    runs, hist = res.load("santurkar2018_landscape_lr")
    fig = plt.figure(figsize=(13, 12), layout="constrained")
    subs = fig.subfigures(3, 1)
    for sub, metric, layer, ylabel in (
        (subs[0], "curv_lr_lambda", "all", "lr x top Hessian eigenvalue (2: stability edge)"),
        (subs[1], "curv_gHg", "grad", "curvature along the gradient g'Hg/||g||^2"),
        (subs[2], "curv_overshoot", "grad", "overshoot D of the first-order prediction"),
    ):
        plots.curves(
            runs,
            hist,
            metric,
            split="train",
            layer=layer,
            facet="model.activation",
            style="optim.lr",
            logy=True,
            ylabel=ylabel,
            fig=sub,
        )
    fig.suptitle(
        "C10 where smoothness can be judged: SGD lr 0.1, 0.3, 1.0 on the mean loss, batch 64"
    )
    return fig


def yang2019_depth(res: Results):
    """The hidden layers' end-to-end Jacobian at initialisation against depth, BN in training
    mode (the probe batch's own statistics) vs no BN: gain and spread."""
    runs, hist = res.load("yang2019_depth")
    init = tables.init_jacobian(hist).reset_index()
    depth = runs["model.widths"].map(lambda w: len(tables.widths_of(w)))
    rows = runs.assign(depth=depth).merge(init, on=["run", "seed"])
    with np.errstate(divide="ignore"):  # float32 underflow (deep sigmoid): left out, not -inf
        logs = np.log10(rows[["gain", "spread"]].where(rows[["gain", "spread"]] > 0))
    rows = rows.assign(log_gain=logs["gain"], log_spread=logs["spread"])
    arm = rows["model.norm"].map({"none": "no BN", "batch": "BN"})
    standardised = rows.get("data.standardize", pd.Series(False, index=rows.index)).eq(True)
    rows = rows.assign(arm=arm.where(~standardised, arm + ", standardised pixels"))
    fig = plt.figure(figsize=(9, 7), layout="constrained")
    subs = fig.subfigures(2, 1)
    for sub, y, ylabel in (
        (subs[0], "log_gain", "log10 gain mean(s^2) (0: isometric gain)"),
        (subs[1], "log_spread", "log10 spread var(s^2)/mean(s^2)^2"),
    ):
        plots.final_points(
            rows,
            "depth",
            y,
            facet="model.activation",
            logx=True,
            ylabel=ylabel,
            xlabel="hidden layers",
            hue="arm",
            fig=sub,
        )
    fig.suptitle(
        "End-to-end Jacobian at initialisation by depth, BN in training mode\n"
        "(C3's control at 2 hidden layers: per-pixel standardised inputs)"
    )
    return fig


def arms(runs: pd.DataFrame) -> pd.Series:
    """Each member's arm of a norm x placement comparison: 'no BN', 'BN before', 'BN after'."""
    place = runs.get("model.placement", "before")
    return ("BN " + pd.Series(place, index=runs.index).astype(str)).where(
        runs["model.norm"] != "none", "no BN"
    )


def study_tuned(res: Results):
    """C4, C14, C18, C19: held-out accuracy against the learning rate per arm, and test
    accuracy over training at each arm's chosen learning rate."""
    runs, hist = res.load("study_tuned")
    valid = hist[(hist["split"] == "valid") & (hist["metric"] == "acc")]
    last = valid.sort_values("step").groupby(["run", "seed"])["value"].last().rename("valid_acc")
    runs = runs.assign(arm=arms(runs)).merge(last.reset_index(), on=["run", "seed"], how="left")
    scored = runs.assign(error=1 - runs["valid_acc"].where(runs["status"] == "finished", 0.0))
    fig = plt.figure(figsize=(10, 7.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1)
    plots.final_points(
        scored,
        "optim.lr",
        "error",
        hue="arm",
        facet="model.activation",
        logx=True,
        ylabel="held-out error at 20,000 steps\n(1 - accuracy; diverged = 1)",
        xlabel="SGD learning rate (mean loss)",
        fig=top,
    )
    for ax in top.axes:
        ax.set_yscale("log")
    best = at_best_lr(runs)
    plots.curves(
        best,
        hist,
        "acc",
        facet="model.activation",
        hue="arm",
        ylabel="test accuracy at the chosen lr",
        ylim=(0.9, 1.0),
        fig=bottom,
    )
    fig.suptitle(
        "C4, C14, C18, C19: each arm at its own best learning rate, chosen on 5,000 held-out\n"
        "training images (top); test accuracy at that rate (bottom). SGD, mean loss, batch 64"
    )
    return fig


def santurkar2018_noisy_bn(res: Results):
    """BN vs noisy BN vs noise without BN: accuracy and drift of the activations."""
    runs, hist = res.load("santurkar2018_noisy_bn")
    fig = plt.figure(figsize=(11, 8), layout="constrained")
    top, bottom = fig.subfigures(2, 1)
    plots.curves(
        runs, hist, "acc", facet="model.activation", ylabel="test accuracy", fig=top, ylim=(0.5, 1)
    )
    top.suptitle("test accuracy")
    plots.curves(
        runs,
        hist,
        "train_drift_prev",
        split="train",
        facet="model.activation",
        layer="fc3",
        logy=True,
        ylabel="drift of the layer-3 input\nbetween probes (median unit)",
        fig=bottom,
    )
    bottom.suptitle(
        "instability of the layer-3 input: scale-free drift over 250 steps, training mode with "
        "the noise on (probe images)"
    )
    fig.suptitle("Santurkar et al. 2018 Sec. 2.1: noisy BN (relu/sigmoid, SGD lr 0.1, mean loss)")
    return fig


def _sensitivity(res: Results, experiment: str, x: str, xlabel: str, title: str):
    """Final accuracy (diverged = 0) against a swept setting on a log axis, BN vs no BN."""
    runs, _ = res.load(experiment)
    return plots.final_points(
        runs.assign(test_acc=acc_or_zero(runs)),
        x,
        "test_acc",
        logx=True,
        ylabel="test accuracy after 5,000 steps (diverged = 0)",
        xlabel=xlabel,
        title=title,
        ylim=(0, 1),
    )


def study_lr(res: Results):
    """C12: final accuracy vs learning rate, BN vs no BN."""
    return _sensitivity(
        res,
        "study_lr",
        "optim.lr",
        "SGD learning rate (mean loss)",
        "C12: learning-rate sensitivity, relu, batch 64",
    )


def study_init_scale(res: Results):
    """C13: final accuracy vs initial weight scale, BN vs no BN."""
    return _sensitivity(
        res,
        "study_init_scale",
        "model.init_scale",
        "initial weight scale (x He init)",
        "C13: initialisation-scale sensitivity, relu, SGD lr 0.1",
    )


def study_placement(res: Results):
    """C14: final accuracy with BN before vs after each activation."""
    runs, _ = res.load("study_placement")
    return plots.final_points(
        runs,
        "model.activation",
        "test_acc",
        hue="model.placement",
        ylabel="test accuracy after 5,000 steps",
        title="C14: BN before vs after the activation (SGD lr 0.1, mean loss)",
    )


def study_dropout(res: Results):
    """C15: final accuracy by dropout position, with and without BN."""
    runs, _ = res.load("study_dropout")
    base, _ = res.load("study_lr")
    base = select(base, optim__lr=0.1).assign(**{"model.dropout_at": "no dropout"})
    table = pd.concat([base, runs], ignore_index=True)
    return plots.final_points(
        table,
        "model.dropout_at",
        "test_acc",
        ylabel="test accuracy after 5,000 steps",
        xlabel="dropout (p=0.5) position",
        title="C15: dropout with and without BN (relu, SGD lr 0.1)",
    )


def study_bias(res: Results):
    """C16: final accuracy with and without the bias before BN."""
    runs, _ = res.load("study_bias")
    return plots.final_points(
        runs,
        "model.activation",
        "test_acc",
        hue="model.bias_before_norm",
        ylabel="test accuracy after 5,000 steps",
        title="C16: bias before BN on/off (SGD lr 0.1)",
    )


def study_order(res: Results):
    """C17: the test accuracy with BN's running statistics recomputed over shuffled orders of
    the last batches (weights frozen), and the spread from the data order with the weights."""
    runs, hist = res.load("study_order")
    base, _ = res.load("study_lr")
    fig = plt.figure(figsize=(11, 4.6), layout="constrained")
    left, right = fig.subfigures(1, 2)
    names = {
        "reorder_acc_shift": "mean over orders\nminus own order",
        "reorder_acc_sd": "SD across orders",
    }
    rows = hist[(hist["split"] == "test") & hist["metric"].isin(list(names))]
    rows = plots.with_config(rows, runs, ["model.norm"])
    plots.final_points(
        rows.assign(what=rows["metric"].map(names)),
        "what",
        "value",
        ylabel="test accuracy",
        xlabel="running statistics from 10 shuffled orders of the last 1,000 batches",
        fig=left,
    )
    left.suptitle("the order alone (weights frozen)")
    table = pd.concat(
        [
            runs.assign(members="same init,\nown data order"),
            select(base, optim__lr=0.1).assign(members="own init,\nown data order"),
        ],
        ignore_index=True,
    )
    plots.final_points(
        table,
        "members",
        "test_acc",
        ylabel="test accuracy after 5,000 steps",
        xlabel="what differs between members",
        fig=right,
    )
    right.suptitle("the order with the weights it leads to")
    fig.suptitle("C17: does the order of mini-batches matter? (BN, SGD lr 0.1, mean loss)")
    return fig


# figure name -> function(Results) -> Figure (or an animation, written as a GIF)
FIGURES = {
    "mlds2017_fig1": mlds2017_fig1,
    "mlds2017_fig2": mlds2017_fig2,
    "mlds2017_fig3": mlds2017_fig3,
    "mlds2017_fig3_anim": mlds2017_fig3_gif,
    "mlds2017_fig4": mlds2017_fig4,
    "mlds2017_fig5": mlds2017_fig5,
    "mlds2017_fig6": mlds2017_fig6,
    "mlds2017_fig9": mlds2017_fig9,
    "mlds2017_mismatch": mlds2017_mismatch,
    "ioffe2015_fig1": ioffe2015_fig1,
    "santurkar2018_ics": santurkar2018_ics,
    "santurkar2018_landscape": santurkar2018_landscape,
    "santurkar2018_landscape_lr": santurkar2018_landscape_lr,
    "santurkar2018_noisy_bn": santurkar2018_noisy_bn,
    "yang2019_depth": yang2019_depth,
    "study_lr": study_lr,
    "study_init_scale": study_init_scale,
    "study_placement": study_placement,
    "study_dropout": study_dropout,
    "study_bias": study_bias,
    "study_order": study_order,
    "study_tuned": study_tuned,
    "demo": lambda res: plots.accuracy_curves(
        *res.load("demo"), title="Demo: BN vs no BN, SGD lr 0.01 on the summed loss"
    ),
}


def empty_panels(fig) -> list[str]:
    """Titles of the figure's visible axes that show no data (no line, marker, bar or image)."""
    return [
        ax.get_title() or f"panel {i + 1}"
        for i, ax in enumerate(fig.get_axes())
        if ax.get_visible()
        and ax.axison
        and not (ax.lines or ax.collections or ax.patches or ax.images)
    ]


def _numbered_ids(svg: str) -> str:
    """The SVG with its element ids numbered in order of appearance. Matplotlib derives an id
    from its object's exact coordinates, which can differ in the last bits from one process to
    the next (the layout's float sums); numbered ids keep a redrawn figure the same file."""
    ids = dict.fromkeys(re.findall(r'id="([A-Za-z]+[0-9a-f]{8,})"', svg))
    names = {old: f"{old[0]}{i:04d}" for i, old in enumerate(ids)}
    if not names:
        return svg
    return re.sub("|".join(map(re.escape, names)), lambda m: names[m.group(0)], svg)


def draw(name: str, res: Results, out: Path) -> list[Path]:
    """Draw one figure and write it; return the files written."""
    made = FIGURES[name](res)
    empty = [] if isinstance(made, plots.animation.Animation) else empty_panels(made)
    if empty:
        plt.close(made)
        raise ValueError(f"panels without data: {'; '.join(empty)} (a measure it shows is missing)")
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(made, plots.animation.Animation):
        path = out / f"{name}.gif"
        with atomic_path(path) as tmp:
            made.save(tmp, writer=plots.animation.PillowWriter(fps=2), dpi=90)
        plt.close(made._fig)
        return [path]
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    with plt.rc_context({"svg.hashsalt": "bnlab"}):  # fixed SVG ids, and no date below:
        for path in paths:  # a figure redrawn from the same data is the same file
            with atomic_path(path) as tmp:
                meta = {"Date": None} if path.suffix == ".svg" else None
                made.savefig(tmp, dpi=130, metadata=meta)
                if path.suffix == ".svg":
                    tmp.write_text(_numbered_ids(tmp.read_text()))
    plt.close(made)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bnlab figures", description=__doc__)
    p.add_argument("names", nargs="+", choices=[*FIGURES, "all"], help="figures, or all")
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder")
    p.add_argument("--out", type=Path, help="output folder (default RESULTS/figures)")
    args = p.parse_args(argv)
    matplotlib.use("Agg")  # files only (the plot functions leave the backend to the caller)
    out = args.out or args.results / "figures"
    res = Results(args.results)
    names = figures_of(REPRODUCTION) if "all" in args.names else args.names
    failed = []
    for name in names:
        try:
            paths = draw(name, res, out)
        except (FileNotFoundError, KeyError, ValueError) as e:
            print(f"{name}: not drawn: {str(e).strip(chr(34) + chr(39))}", file=sys.stderr)
            failed.append(name)
            continue
        print(f"{name}: wrote {', '.join(str(p) for p in paths)}")
    if failed:
        print(f"bnlab figures: {len(failed)} of {len(names)} not drawn", file=sys.stderr)
    return int(bool(failed))


if __name__ == "__main__":
    sys.exit(main())
