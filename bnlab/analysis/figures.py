"""Draw the published figures from collected sweeps: `bnlab figures NAME|all`.

Each figure reads the sweeps it needs from RESULTS/sweeps (collecting a sweep first when its
runs.parquet is missing) and writes RESULTS/figures/NAME.png and NAME.svg (the Fig. 3
animation also NAME.gif). `--sweep DIR` reads the figure's own experiment from a sweep folder
trained anywhere (hydra.sweep.dir=DIR) and writes into DIR. A figure that cannot be drawn (its
sweep has no runs, a measure it shows is missing) is named with the reason, and the command
exits 1; `all` keeps the figures whose runs are not here as they are (the committed ones).
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

from ..runs.collect import acc_or_zero, read_tables, select
from ..runs.collect import main as collect_main
from ..runs.experiments import (
    EXPERIMENTS,
    EXTRAS,
    REPRODUCTION,
    TIMES,
    experiments_of,
    figures_of,
    sweep,
    sweep_points,
)
from ..runs.records import atomic_path
from . import plots, tables
from .selection import at_best_lr

DONE = ("finished", "diverged")


class NoRuns(FileNotFoundError):
    """A figure's sweep has no runs here (not trained in this results folder)."""


class Results:
    """Collected tables of the sweeps under RESULTS/sweeps (or in the folders given for some
    sweeps: {sweep name: folder}), loaded once each."""

    def __init__(self, root: Path, folders: dict[str, Path] | None = None):
        self.root = Path(root)
        self.folders = {k: Path(v) for k, v in (folders or {}).items()}
        self._cache: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}

    def load(self, experiment: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(runs, history) of an experiment's sweep, members that finished or diverged only."""
        name = sweep(experiment)
        if name not in self._cache:
            folder = self.folders.get(name, self.root / "sweeps" / name)
            if not folder.is_dir():
                raise NoRuns(f"no sweep folder {folder}; {how_to_train(experiment, self.root)}")
            try:
                runs, history = read_tables(folder)
            except FileNotFoundError:
                if collect_main([str(folder)]) != 0:
                    raise NoRuns(
                        f"no runs in {folder}; {how_to_train(experiment, self.root)}"
                    ) from None
                runs, history = read_tables(folder)
            self._cache[name] = (runs[runs["status"].isin(DONE)], history)
        return self._cache[name]


def training_minutes(experiment: str, root: Path) -> int | None:
    """Minutes on 2 cores to train an experiment's runs, from the last reproduction's
    job-seconds (RESULTS/tables/reproduction_times.csv): its own row's where that timed every
    point of it, else its sweep's mean per timed run times its points (a run shared with
    another experiment is timed under the first of them)."""
    path = Path(root) / "tables" / TIMES
    if not path.exists():
        return None
    times = pd.read_csv(path).set_index("experiment")
    own = times["job_s"].get(experiment, 0.0)
    mates = [e for e in experiments_of(sweep(experiment)) if e in times.index]
    try:
        points = len(sweep_points(experiment))
        runs = times.loc[mates, "runs"].sum()
        per_run = times.loc[mates, "job_s"].sum() / runs if runs else 0.0
        timed = times["runs"].get(experiment, 0) == points
        job_s = own if timed else per_run * points
    except (KeyError, ValueError):  # an older file without runs, or no config
        points, job_s = 2, own
    if not job_s > 0:
        return None
    return max(1, round(job_s / 60 / min(2, points)))  # two jobs at a time


def how_to_train(experiment: str, root: Path) -> str:
    """The command that trains an experiment's runs, and how long they take (the committed
    tables hold one row per member, not the per-step curves figures draw)."""
    command = (
        f"bnlab reproduce --only {experiment}"
        if EXPERIMENTS[experiment].reproduce
        else f"bnlab train -m experiment={experiment}"
    )
    minutes = training_minutes(experiment, root)
    took = f" (about {minutes} min on 2 cores)" if minutes else ""
    return (
        f"train it first: {command}{took}, or draw it from a sweep folder trained elsewhere "
        f"with --sweep DIR; the committed results/tables hold final numbers per member, not "
        "the per-step curves figures need"
    )


def trained(runs: pd.DataFrame) -> str:
    """The steps the finished members trained, for a label: '5,000' or '300-5,000'."""
    done = runs.loc[runs["status"] == "finished", "steps_done"]
    done = done if len(done) else runs["steps_done"]
    if done.empty:
        return "?"
    lo, hi = int(done.min()), int(done.max())
    return f"{hi:,}" if lo == hi else f"{lo:,}-{hi:,}"


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
    first = min(5000, int(runs["steps_done"].max()))
    return plots.curves(
        select(runs, model__activation=["relu", "sigmoid"]),
        hist,
        "acc",
        facet="model.activation",
        style="optim.name",
        xmax=first,
        ylabel="test accuracy",
        title=f"2017 study Fig. 5: SGD vs Adam x BN, lr 1e-4, first {first:,} of "
        f"{trained(runs)} steps",
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
    top.suptitle(
        f"Faithful: sigmoid, SGD lr 0.01 on the summed loss, {trained(runs)} steps per batch size"
    )
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
        ylabel=f"test accuracy after {trained(runs)} steps",
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
    return _tuned_figure(
        res,
        "study_tuned",
        "C4, C14, C18, C19: each arm at its own best learning rate, chosen on 5,000 held-out\n"
        "training images (top); test accuracy at that rate (bottom). SGD, mean loss, batch 64",
    )


def _with_valid(runs: pd.DataFrame, hist: pd.DataFrame) -> pd.DataFrame:
    """runs with valid_acc, the last held-out accuracy, and valid0: that, diverged = 0."""
    valid = hist[(hist["split"] == "valid") & (hist["metric"] == "acc")]
    last = valid.sort_values("step").groupby(["run", "seed"])["value"].last().rename("valid_acc")
    runs = runs.merge(last.reset_index(), on=["run", "seed"], how="left")
    return runs.assign(valid0=runs["valid_acc"].where(runs["status"] == "finished", 0.0))


def _tuned_figure(res: Results, experiment: str, title: str):
    """Held-out error against the learning rate per arm (top) and test accuracy over training
    at each arm's chosen learning rate (bottom)."""
    runs, hist = res.load(experiment)
    runs = _with_valid(runs.assign(arm=arms(runs)), hist)
    scored = runs.assign(error=1 - runs["valid0"])
    fig = plt.figure(figsize=(10, 7.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1)
    plots.final_points(
        scored,
        "optim.lr",
        "error",
        hue="arm",
        facet="model.activation",
        logx=True,
        ylabel=f"held-out error at {trained(runs)} steps\n(1 - accuracy; diverged = 1)",
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
    fig.suptitle(title)
    return fig


def reparam_arms(runs: pd.DataFrame) -> pd.Series:
    """Each member's version in the scale-equivalence study: 'reference', or 'a = 4, eps x a^2'
    / 'a = 4, eps fixed' (a: the factor on the weights feeding BN)."""
    a, eps = runs["model.invariant_init_scale"], runs["model.bn_eps"]
    eps0 = eps[a == 1.0].iloc[0]
    kind = np.where(np.isclose(eps, eps0 * a * a) & (a != 1.0), "eps x a^2", "eps fixed")
    names = [f"a = {x:g}, {k}" for x, k in zip(a, kind)]
    return pd.Series(names, index=runs.index).where(a != 1.0, "reference")


def study_scale_equiv(res: Results):
    """C20: each rescaled version's test loss against the reference's over training (its
    relative difference), and the effective learning rate of the weights feeding BN."""
    runs, hist = res.load("study_scale_equiv")
    runs = runs.assign(version=reparam_arms(runs))
    loss = hist[(hist["metric"] == "loss") & (hist["split"] == "test") & (hist["layer"] == "")]
    loss = plots.with_config(loss, runs, ["version"])
    ref = loss[loss["version"] == "reference"].set_index(["seed", "step"])["value"]
    dev = loss[loss["version"] != "reference"]
    ref_values = ref.reindex(pd.MultiIndex.from_frame(dev[["seed", "step"]])).to_numpy()
    rel = (dev["value"] - ref_values).abs() / ref_values
    # exact agreement is drawn at 1e-9 (a log axis has no 0), labelled as such
    dev = dev.assign(metric="loss_dev", value=rel.clip(lower=1e-9)).drop(columns="version")
    fig = plt.figure(figsize=(11, 4.6), layout="constrained")
    left, right = fig.subfigures(1, 2)
    plots.curves(
        runs,
        dev,
        "loss_dev",
        hue="version",
        logy=True,
        fig=left,
        ylabel="|test loss - reference| / reference\n(1e-9: bit for bit equal)",
    )
    plots.curves(
        runs,
        hist,
        "lr_over_w2",
        split="train",
        layer="fc2",
        hue="version",
        logy=True,
        fig=right,
        ylabel="effective lr of fc2: lr / ||w_j||^2\n(mean over units)",
    )
    fig.suptitle(
        "C20: weights feeding BN x a at initialisation, their lr x a^2 (BN relu, SGD lr 0.1, "
        "mean loss)"
    )
    return fig


def study_wd(res: Results):
    """C21: effective learning rate and norm of the weights feeding BN, and test accuracy,
    over training per weight decay, for no BN and BN with weight decay on every parameter or
    on the weights feeding BN only."""
    runs, hist = res.load("study_wd")
    on = runs.get("optim.weight_decay_on", pd.Series("all", index=runs.index))
    how = np.where(on == "invariant", "BN, decay on the weights feeding BN", "BN, decay on all")
    runs = runs.assign(how=np.where(runs["model.norm"] == "batch", how, "no BN"))
    bn = runs[runs["model.norm"] == "batch"]
    fig = plt.figure(figsize=(13, 8), layout="constrained")
    top, bottom = fig.subfigures(2, 1)
    left, right = top.subfigures(1, 2)
    wd = "optim.weight_decay"
    plots.curves(
        bn,
        hist,
        "lr_over_w2",
        split="train",
        layer="fc2",
        hue=wd,
        style="how",
        logy=True,
        fig=left,
        ylabel="BN: effective lr of fc2\nlr / ||w_j||^2 (mean over units)",
    )
    plots.curves(
        runs,
        hist,
        "w_fro",
        split="train",
        layer="fc2",
        hue=wd,
        style="how",
        logy=True,
        fig=right,
        ylabel="||W2|| (Frobenius)",
    )
    plots.curves(
        runs,
        hist,
        "acc",
        facet="how",
        hue=wd,
        ylim=(0.95, 0.99),
        fig=bottom,
        ylabel="test accuracy",
    )
    fig.suptitle("C21: weight decay with and without BN (relu, SGD lr 0.1, mean loss, batch 64)")
    return fig


def study_ghost(res: Results):
    """C22: test accuracy over training and final test loss and gap per ghost-BN group size
    (0: the whole batch of 64)."""
    runs, hist = res.load("study_ghost")
    runs = runs.assign(group=runs["model.bn_group"].replace(0, 64))
    fig = plt.figure(figsize=(11, 7.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1)
    plots.curves(
        runs,
        hist,
        "acc",
        facet="model.activation",
        hue="group",
        ylim=(0.9, 0.99),
        fig=top,
        ylabel="test accuracy (running statistics)",
    )
    left, right = bottom.subfigures(1, 2)
    for sub, y, ylabel in (
        (left, "test_loss", "final test loss"),
        (right, "gap", "train - test accuracy"),
    ):
        plots.final_points(
            runs.assign(gap=runs["train_acc"] - runs["test_acc"]),
            "group",
            y,
            hue="model.activation",
            logx=True,
            ylabel=ylabel,
            xlabel="examples per BN group (SGD batch 64)",
            fig=sub,
        )
    fig.suptitle("C22: ghost batch norm, BN statistics over groups of the SGD batch (SGD lr 0.1)")
    return fig


def activation_grads(res: Results):
    """C23: the log ratio of first- to last-hidden-layer activation gradients over the 2017
    Fig. 2 runs, and at initialisation against depth (when yang2019_depth has been run)."""
    runs, hist = res.load("mlds2017_fig2")
    series = tables.agrad_log_ratio(hist).rename(columns={"ratio": "value"})
    series = series.assign(split="train", metric="agrad_log_ratio", layer="")
    try:
        druns, dhist = res.load("yang2019_depth")
    except FileNotFoundError:
        druns = None
    fig = plt.figure(figsize=(11, 7.5 if druns is not None else 4), layout="constrained")
    top, bottom = fig.subfigures(2, 1) if druns is not None else (fig, None)
    ylabel = "log10 ||dL/dz_1|| / ||dL/dz_last||"
    plots.curves(
        runs,
        series,
        "agrad_log_ratio",
        split="train",
        facet="model.activation",
        fig=top,
        ylabel=f"{ylabel}\n(0: no vanishing)",
    )
    first = min(1000, int(runs["steps_done"].max()))
    top.suptitle(f"2017 Fig. 2 runs (SGD lr 1e-4, summed loss), steps 1-{first:,}")
    if druns is not None:
        init = tables.activation_gradients(dhist)["agrad_log_ratio_first"].rename("ratio")
        plain = ~druns.get("data.standardize", pd.Series(False, index=druns.index)).eq(True)
        drows = druns[plain].assign(
            depth=druns["model.widths"].map(lambda w: len(tables.widths_of(w)))
        )
        plots.final_points(
            drows.merge(init.reset_index(), on=["run", "seed"]),
            "depth",
            "ratio",
            facet="model.activation",
            logx=True,
            xlabel="hidden layers",
            ylabel=f"{ylabel}\nat initialisation",
            fig=bottom,
        )
        bottom.suptitle("at initialisation by depth (yang2019_depth), BN in training mode")
    fig.suptitle("C23: activation-space gradients, first vs last hidden layer")
    return fig


def study_depth(res: Results):
    """C24: test accuracy at each arm's best learning rate against depth, and the held-out
    accuracy at every learning rate."""
    runs, hist = res.load("study_depth")
    runs = runs.assign(depth=runs["model.widths"].map(lambda w: len(tables.widths_of(w))))
    runs = _with_valid(runs, hist)
    best = at_best_lr(runs, extra=("depth",))
    fig = plt.figure(figsize=(11, 7.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1)
    plots.final_points(
        best,
        "depth",
        "acc0",
        facet="model.activation",
        logx=True,
        xlabel="hidden layers (width 100)",
        ylabel=f"test accuracy at the chosen lr\n({trained(runs)} steps; diverged = 0)",
        fig=top,
    )
    lr = runs["optim.lr"].map(lambda v: f"lr {v:g}")
    plots.final_points(
        runs.assign(setting=runs["model.norm"].map(plots.NORM_LABELS) + ", " + lr),
        "depth",
        "valid0",
        hue="setting",
        facet="model.activation",
        logx=True,
        xlabel="hidden layers",
        ylabel="held-out accuracy at every lr\n(diverged = 0)",
        fig=bottom,
    )
    fig.suptitle("C24: depth, BN vs none, each arm at its best SGD learning rate (batch 64)")
    return fig


SHIFT_MODE_NAMES = {
    "running": "BN, running stats",
    "adapted": "BN, re-estimated",
    "batch": "BN, per batch of 64",
}


def study_shift(res: Results):
    """C25: accuracy on the shifted test sets per BN evaluation mode, and without BN."""
    runs, hist = res.load("study_shift")
    rows = hist[hist["metric"].str.startswith("shift_acc_")]
    rows = plots.with_config(rows, runs, ["model.norm", "model.activation"])
    mode = rows["metric"].str.removeprefix("shift_acc_")
    how = mode.map(SHIFT_MODE_NAMES).where(rows["model.norm"] != "none", "no BN")
    rows = rows.assign(how=how, shift=rows["layer"])
    fig = plots.final_points(
        rows,
        "shift",
        "value",
        hue="how",
        facet="model.activation",
        ylabel="test accuracy",
        xlabel="test set",
        title=f"C25: covariate shift at test time (SGD lr 0.1, {trained(runs)} steps)",
        ylim=(0, 1),
    )
    for ax in fig.axes:
        ax.tick_params(axis="x", labelrotation=40)
    return fig


def study_momentum(res: Results):
    """C26: study_tuned's figure with SGD momentum 0.9 and a cosine schedule."""
    return _tuned_figure(
        res,
        "study_momentum",
        "C26: SGD momentum 0.9, cosine schedule, each arm at its own best learning rate (top),\n"
        "test accuracy at that rate (bottom); mean loss, batch 64",
    )


# study_matched_lr's arms in the figure, in drawing order
MATCHED_ARMS = (
    "no BN at its best lr",
    "BN at its best lr",
    "BN at no BN's lr",
    "no BN at BN's lr",
    "no BN at BN's lr + warmup",
    "no BN at BN's lr + clipping",
)


def study_matched_lr(res: Results):
    """C27, C28: study_tuned's arms at their own best rates (confirmation seeds), BN at no
    BN's rate, and no BN at BN's rate alone, with warmup and with clipping: test accuracy over
    training (top) and at the end (bottom, diverged = 0)."""
    runs, hist = res.load("study_matched_lr")
    tuned, tuned_hist = res.load("study_tuned")
    best = at_best_lr(_with_valid(tuned, tuned_hist))
    best = best[best["model.placement"] != "after"]
    best = best.assign(how=np.where(best["model.norm"] == "none", *MATCHED_ARMS[:2]))
    warm = runs.get("optim.warmup_steps", 0) > 0
    clip = runs.get("optim.clip_norm", 0) > 0
    plain = np.where(runs["model.norm"] == "none", *MATCHED_ARMS[3:1:-1])
    runs = runs.assign(how=np.select([warm, clip], MATCHED_ARMS[4:], plain))
    both = pd.concat([best, runs], ignore_index=True)
    both = both.assign(acc0=acc_or_zero(both), how=pd.Categorical(both["how"], MATCHED_ARMS))
    fig = plt.figure(figsize=(10, 7.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1)
    plots.curves(
        both,
        pd.concat([tuned_hist, hist], ignore_index=True),
        "acc",
        facet="model.activation",
        hue="how",
        ylabel="test accuracy",
        ylim=(0.9, 1.0),
        fig=top,
    )
    plots.final_points(
        both,
        "how",
        "acc0",
        hue="how",
        facet="model.activation",
        ylabel=f"test accuracy at {trained(runs)} steps\n(mean, min-max; diverged = 0)",
        xlabel="arm and learning rate",
        ylim=(0, 1),
        fig=bottom,
    )
    for ax in bottom.axes:  # the same arms as above, named on the x axis: no legend
        if ax.get_legend():
            ax.get_legend().remove()
        ax.tick_params(axis="x", labelrotation=25)
    fig.suptitle(
        "C27, C28: is BN's benefit the larger learning rate? Each arm's best lr chosen on\n"
        "held-out images in study_tuned; SGD, mean loss, batch 64; fresh seeds judged"
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
        ylabel=f"test accuracy after {trained(runs)} steps (diverged = 0)",
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
        ylabel=f"test accuracy after {trained(runs)} steps",
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
        ylabel=f"test accuracy after {trained(table)} steps",
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
        ylabel=f"test accuracy after {trained(runs)} steps",
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
        ylabel=f"test accuracy after {trained(table)} steps",
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
    "study_scale_equiv": study_scale_equiv,
    "study_wd": study_wd,
    "study_ghost": study_ghost,
    "activation_grads": activation_grads,
    "study_depth": study_depth,
    "study_shift": study_shift,
    "study_momentum": study_momentum,
    "study_matched_lr": study_matched_lr,
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


def experiment_of(figure: str) -> str:
    """The experiment whose runs a figure is drawn from (the registry's)."""
    return next(e.name for e in EXPERIMENTS.values() if figure in e.figures)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bnlab figures", description=__doc__)
    p.add_argument("names", nargs="+", choices=[*FIGURES, "all"], help="figures, or all")
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder")
    p.add_argument(
        "--sweep",
        type=Path,
        help="a sweep folder trained anywhere (hydra.sweep.dir) holding the figure's runs",
    )
    p.add_argument("--out", type=Path, help="output folder (RESULTS/figures; with --sweep: DIR)")
    args = p.parse_args(argv)
    every = "all" in args.names
    names = figures_of(REPRODUCTION + EXTRAS) if every else args.names
    folders = {}
    if args.sweep is not None:
        own = {sweep(experiment_of(n)) for n in names}
        why = None
        if every or len(own) != 1:
            why = "name the figures of one experiment's sweep, not all"
        elif not args.sweep.is_dir():
            why = "no such folder; give the sweep's hydra.sweep.dir"
        if why:
            print(f"error: --sweep {args.sweep}: {why}", file=sys.stderr)
            return 2
        folders = {own.pop(): args.sweep}
    matplotlib.use("Agg")  # files only (the plot functions leave the backend to the caller)
    out = args.out or (args.sweep if args.sweep is not None else args.results / "figures")
    res = Results(args.results, folders)
    failed, kept = [], []
    for name in names:
        try:
            paths = draw(name, res, out)
        except (FileNotFoundError, KeyError, ValueError) as e:
            if every and isinstance(e, NoRuns):  # not here: the figure in `out` stays as it is
                kept.append(name)
                continue
            print(f"{name}: not drawn: {str(e).strip(chr(34) + chr(39))}", file=sys.stderr)
            failed.append(name)
            continue
        print(f"{name}: wrote {', '.join(str(p) for p in paths)}")
    if kept:
        print(
            f"kept as they are ({len(kept)}; their runs are not in {args.results / 'sweeps'}): "
            f"{', '.join(kept)}"
        )
    if failed:
        print(f"bnlab figures: {len(failed)} of {len(names)} not drawn", file=sys.stderr)
    return int(bool(failed))


if __name__ == "__main__":
    sys.exit(main())
