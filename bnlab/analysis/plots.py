"""Plot functions: tables in, matplotlib Figure out, no file I/O.

The tables are the collector's (bnlab.runs.collect): `runs` has one row per member (config fields
as columns named like their overrides, 'model.norm', plus final metrics such as test_acc);
`history` is long format (run, seed, step, split, metric, layer, value). Every curve (seaborn
lineplot) is the mean over seeds with the min-max band across seeds; every point (pointplot)
is the mean over seeds with a min-max bar: no bootstrap, a redrawn figure is the same file.
Colours are fixed per setting so that a setting looks the same in every figure.
"""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import animation
from matplotlib.figure import SubFigure
from matplotlib.lines import Line2D

from ..measurement.probes.jacobian import JAC_EDGES as JAC_BINS

# One colour per normalization, reused by every figure.
NORM_COLORS = {
    "none": "#4d4d4d",
    "batch": "#1f77b4",
    "batch_scratch": "#17becf",
    "renorm": "#2ca02c",
    "renorm_mlds2017": "#98df8a",
    "noisy_batch": "#ff7f0e",
    "noise": "#d62728",
    "layer": "#9467bd",
}
NORM_LABELS = {
    "none": "no BN",
    "batch": "BN",
    "batch_scratch": "BN (from scratch)",
    "renorm": "Batch Renorm",
    "renorm_mlds2017": "Batch Renorm (2017 study's)",
    "noisy_batch": "noisy BN",
    "noise": "noise, no BN",
    "layer": "layer norm",
}
# arms of a comparison (study_tuned, the depth study), the norms in their own colours
ARM_COLORS = {
    "no BN": NORM_COLORS["none"],
    "BN before": NORM_COLORS["batch"],
    "BN after": "#17a589",
    "BN": NORM_COLORS["batch"],
    "no BN, standardised pixels": "#b3b3b3",  # C3's input-scale control
    "BN, standardised pixels": "#9ecae1",
}
# seaborn's dash codes for solid, dashed, dotted, dash-dot (one per value of a style column)
DASHES = ["", (4, 1.5), (1, 1), (3, 1.25, 1.5, 1.25)]
MARKERS = ["o", "s", "^", "D", "v"]
# any other hue (not a norm) cycles through these
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"]
MINMAX = ("pi", 100)  # seaborn's errorbar for the 0-100th percentile interval: min to max
# seaborn lineplot's arguments for every curve (the figure draws its own legend)
BAND = dict(x="step", y="value", errorbar=MINMAX, err_kws={"lw": 0}, lw=1.4, legend=False)


def with_config(history: pd.DataFrame, runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """History rows joined with the given config columns of their member."""
    columns = list(dict.fromkeys(c for c in columns if c is not None))
    return history.merge(runs[["run", "seed", *columns]], on=["run", "seed"], how="inner")


SHORT_NAMES = {"optim.name": "optimiser", "data.batch_size": "batch size"}


def short(column: str) -> str:
    """'model.activation' -> 'activation' (and a few readable names: 'optimiser')."""
    return SHORT_NAMES.get(column, column.split(".")[-1])


# columns that figures build with readable values ('BN before', 'a = 4, eps x a^2')
LABELLED = ("arm", "version", "setting", "how")


def label(column: str | None, value) -> str:
    """Legend / title text for a setting: 'BN' for model.norm=batch, else 'name=value'."""
    if column == "model.norm":
        return NORM_LABELS.get(value, str(value))
    if column in LABELLED:  # already a label ('BN before')
        return str(value)
    return f"{short(column)}={value}" if column else ""


def colors_for(column: str, values) -> dict:
    """A colour per value: the fixed norm colours for model.norm, a palette otherwise."""
    if column == "model.norm":
        return {v: NORM_COLORS.get(v, "black") for v in values}
    if column == "arm":
        return {v: ARM_COLORS.get(v, "black") for v in values}
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(values)}


# settings drawn in this order (then the rest, sorted)
PREFERRED = {
    "model.norm": list(NORM_COLORS),
    "model.placement": ["before", "after"],
    "arm": list(ARM_COLORS),
    "model.dropout_at": ["no dropout", "after_act", "before_bn", "final"],
}


def ordered(values, preferred=None) -> list:
    """Unique values, in the preferred order first (NORM_COLORS for norms; a categorical's own
    order), then sorted."""
    if isinstance(getattr(values, "dtype", None), pd.CategoricalDtype):
        preferred = [*(preferred or []), *values.cat.categories]
    values = list(pd.unique(pd.Series(list(values))))
    first = [v for v in (preferred or []) if v in values]
    return first + sorted((v for v in values if v not in first), key=_sortkey)


def _sortkey(v):
    return (0, v, "") if isinstance(v, int | float | np.number) else (1, 0, str(v))


def _grid(n: int, ncols: int | None = None, size=(4.2, 3.3), sharey=False, fig=None):
    """n panels in rows of ncols, on a new figure or inside `fig` (a subfigure)."""
    ncols = ncols or n
    nrows = -(-n // ncols)
    if fig is None:  # a single panel gets room for a figure title
        width = max(size[0] * ncols, 6.4)
        fig = plt.figure(figsize=(width, size[1] * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _legend(fig, handles: list, title: str) -> None:
    if isinstance(fig, SubFigure):  # inside a composite figure: in the first panel
        fig.axes[0].legend(handles=handles, title=title, fontsize=8, title_fontsize=8)
        return
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=min(len(handles), 6),
        title=title,
        frameon=False,
    )


def _suptitle(fig, title: str) -> None:
    """A figure title wrapped to the figure's width (about 11 characters per inch)."""
    width = fig.get_figwidth() if hasattr(fig, "get_figwidth") else fig.figure.get_figwidth()
    fig.suptitle(textwrap.fill(title, max(40, int(width * 11))))


def _handles(hue, hue_values, colors, style=None, style_values=()) -> list:
    hs = [Line2D([], [], color=colors[v], lw=2, label=label(hue, v)) for v in hue_values]
    hs += [
        Line2D([], [], color="black", dashes=DASHES[i % 4], label=label(style, v))
        for i, v in enumerate(style_values)
    ]
    return hs


def _seeds(rows: pd.DataFrame) -> int:
    return int(rows.groupby("run")["seed"].nunique().min()) if len(rows) else 0


def curves(
    runs: pd.DataFrame,
    history: pd.DataFrame,
    metric: str,
    *,
    split: str = "test",
    layer: str = "",
    facet: str | None = None,
    facet_values: list | None = None,
    hue: str = "model.norm",
    style: str | None = None,
    logy: bool = False,
    xmax: int | None = None,
    ylabel: str | None = None,
    title: str | None = None,
    ncols: int | None = None,
    ylim=None,
    fig=None,
) -> plt.Figure:
    """`metric` (of `split`, `layer`) against the training step: one panel per value of
    `facet`, one colour per value of `hue`, one line style per value of `style`.

    Lines: mean over seeds; bands: min-max over seeds.
    """
    rows = history[
        (history["metric"] == metric) & (history["split"] == split) & (history["layer"] == layer)
    ]
    if xmax is not None:
        rows = rows[rows["step"] <= xmax]
    if logy:  # e.g. drift from step 0 is 0 at step 0: not drawable on a log axis
        rows = rows[rows["value"] > 0]
    rows = with_config(rows, runs, [hue, facet, style, "model.bn_eval", "model.norm"])
    if rows.empty:
        raise ValueError(f"no rows of metric {metric!r} (split {split!r}, layer {layer!r})")
    panels = facet_values or (ordered(rows[facet]) if facet else [None])
    hue_values = ordered(rows[hue], PREFERRED.get(hue))
    colors = colors_for(hue, hue_values)
    hues = {"hue": hue, "hue_order": hue_values, "palette": colors}
    style_values = ordered(rows[style]) if style else []
    dashes = {v: DASHES[i % 4] for i, v in enumerate(style_values)}
    styles = {"style": style, "style_order": style_values, "dashes": dashes} if style else {}
    fig, axes = _grid(len(panels), ncols, fig=fig)
    for ax, panel in zip(axes, panels):
        sub = rows if facet is None else rows[rows[facet] == panel]
        ax.set(
            title=label(facet, panel) if facet else "",
            xlabel="training step",
            ylabel=ylabel or metric,
        )  # before seaborn, which would hide the label of a panel sharing its y axis
        if len(sub):  # a facet value asked for may have no rows (figures names the panel)
            sns.lineplot(sub, **BAND, **styles, **hues, ax=ax)
        if logy:
            ax.set_yscale("log")
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
    if metric == "acc" and "model.bn_eval" in rows:  # always say which statistics BN used
        modes = sorted(rows.loc[rows["model.norm"] != "none", "model.bn_eval"].unique())
        if modes:
            title = (title + "; " if title else "") + f"BN evaluated with {'/'.join(modes)} stats"
    if title:
        _suptitle(fig, title)
    _legend(
        fig,
        _handles(hue, hue_values, colors, style, style_values),
        f"mean and min-max of {_seeds(rows)} seeds",
    )
    return fig


def accuracy_curves(
    runs: pd.DataFrame,
    history: pd.DataFrame,
    split: str = "test",
    facet: str = "model.activation",
    title: str | None = None,
) -> plt.Figure:
    """Accuracy vs step, one colour per normalization, one panel per value of `facet`."""
    return curves(
        runs, history, "acc", split=split, facet=facet, ylabel=f"{split} accuracy", title=title
    )


def final_points(
    table: pd.DataFrame,
    x: str,
    y: str,
    *,
    hue: str = "model.norm",
    facet: str | None = None,
    logx: bool = False,
    ylabel: str | None = None,
    xlabel: str | None = None,
    title: str | None = None,
    ylim=None,
    facet_labels: dict | None = None,
    fig=None,
    sharey: bool = False,
) -> plt.Figure:
    """A per-member final quantity `y` against a setting `x` (numeric: lines; otherwise
    categories side by side): mean over seeds with min-max bars, one colour per `hue`."""
    rows = table.dropna(subset=[y])
    if rows.empty:
        raise ValueError(f"no values of {y!r}")
    panels = ordered(rows[facet]) if facet else [None]
    hue_values = ordered(rows[hue], PREFERRED.get(hue))
    colors = colors_for(hue, hue_values)
    hues = {"hue": hue, "hue_order": hue_values, "palette": colors}
    numeric = pd.api.types.is_numeric_dtype(rows[x])
    h = len(hue_values)
    if numeric:  # numbers: joined, on a numeric axis; categories: side by side
        how = {"native_scale": True, "log_scale": (logx, False), "linestyles": "-", "capsize": 0.08}
    else:
        dodge = h > 1 and x != hue and 0.8 * (h - 1) / h  # x == hue: one point per category
        how = {"dodge": dodge, "linestyles": "none", "capsize": 0.05}
    how |= {"errorbar": MINMAX, "lw": 1.4, "ms": 6, "legend": False}
    markers = [MARKERS[j % 5] for j in range(h)]
    fig, axes = _grid(len(panels), fig=fig, sharey=sharey)
    for ax, panel in zip(axes, panels):
        sub = rows if facet is None else rows[rows[facet] == panel]
        cats = ordered(sub[x], PREFERRED.get(x))
        panel_title = (facet_labels or {}).get(panel, label(facet, panel)) if facet else ""
        ax.set(title=panel_title, xlabel=xlabel or short(x), ylabel=ylabel or y)
        sns.pointplot(sub, x=x, y=y, order=cats, markers=markers, ax=ax, **how, **hues)
        if numeric and len(cats) <= 8:  # the settings themselves as ticks, in plain numbers
            ax.set_xticks([float(c) for c in cats], [f"{float(c):g}" for c in cats])
            ax.minorticks_off()
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
    if title:
        _suptitle(fig, title)
    n = int(rows.groupby([c for c in (x, hue, facet) if c])[y].count().min())
    _legend(fig, _handles(hue, hue_values, colors), f"mean and min-max of {n} seeds")
    return fig


def _hist_table(runs, history, prefix: str) -> pd.DataFrame:
    """Jacobian histogram rows (metric {prefix}_hist_BB) as fractions per member and step."""
    rows = history[history["metric"].str.startswith(f"{prefix}_hist_")]
    rows = with_config(rows, runs, ["model.norm", "model.activation"])
    rows = rows.assign(bin=rows["metric"].str[-2:].astype(int))
    total = rows.groupby(["run", "seed", "step", "layer"])["value"].transform("sum")
    return rows.assign(frac=rows["value"] / total.where(total > 0))


def _draw_hist(ax, rows: pd.DataFrame, norms: list) -> None:
    edges = np.array(JAC_BINS)
    for n in norms:
        part = rows[rows["model.norm"] == n]
        if part.empty:
            continue
        mean = part.groupby("bin")["frac"].mean().reindex(range(len(edges) - 1), fill_value=0)
        ax.stairs(mean.to_numpy(), edges, color=NORM_COLORS[n], lw=1.6, fill=False)
        ax.stairs(mean.to_numpy(), edges, color=NORM_COLORS[n], alpha=0.15, fill=True)
    ax.axvline(0.0, color="black", lw=0.6, ls=":")  # s = 1: isometry


def jacobian_histograms(
    runs: pd.DataFrame,
    history: pd.DataFrame,
    panels: list[tuple[str, str]],
    steps: list[int],
    prefix: str = "jac",
    variant: str = "per-sample Jacobian, BN in eval mode",
    fig=None,
) -> plt.Figure:
    """Histograms of log10 of the layer-Jacobian singular values (fraction per bin, mean over
    seeds), one row per (activation, layer) panel and one column per step, BN vs no BN."""
    rows = _hist_table(runs, history, prefix)
    if rows.empty:
        raise ValueError(f"no {prefix}_hist_* rows: run with probes.jacobian.every > 0")
    norms = ordered(rows["model.norm"], list(NORM_COLORS))
    if fig is None:
        size = (3.2 * len(steps), 2.6 * len(panels) + 0.8)
        fig = plt.figure(figsize=size, layout="constrained")
    axes = fig.subplots(len(panels), len(steps), squeeze=False, sharex=True)
    for i, (act, layer) in enumerate(panels):
        for j, step in enumerate(steps):
            ax = axes[i][j]
            sub = rows[(rows["model.activation"] == act) & (rows["layer"] == layer)]
            _draw_hist(ax, sub[sub["step"] == step], norms)
            ax.set_title(f"{act}, {layer}, step {step}", fontsize=9)
            if i == len(panels) - 1:
                ax.set_xlabel("log10 singular value")
            if j == 0:
                ax.set_ylabel("fraction")
    fig.suptitle(f"Layer-Jacobian singular values: {variant}")
    colors = {n: NORM_COLORS[n] for n in norms}
    _legend(fig, _handles("model.norm", norms, colors), f"mean of {_seeds(rows)} seeds")
    return fig


def jacobian_animation(
    runs: pd.DataFrame,
    history: pd.DataFrame,
    panels: list[tuple[str, str]],
    prefix: str = "jac",
    variant: str = "per-sample Jacobian, BN in eval mode",
) -> animation.FuncAnimation:
    """The histograms of jacobian_histograms, one frame per probed step (save as a GIF)."""
    rows = _hist_table(runs, history, prefix)
    norms = ordered(rows["model.norm"], list(NORM_COLORS))
    steps = sorted(rows["step"].unique())
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False, layout="constrained"
    )
    ymax = rows.groupby(["model.norm", "layer", "step", "bin"])["frac"].mean().max() * 1.05

    def frame(k: int):
        for ax, (act, layer) in zip(axes[0], panels):
            ax.clear()
            sub = rows[(rows["model.activation"] == act) & (rows["layer"] == layer)]
            _draw_hist(ax, sub[sub["step"] == steps[k]], norms)
            ax.set(
                title=f"{act}, {layer}, step {steps[k]}",
                xlabel="log10 singular value",
                ylabel="fraction",
                ylim=(0, ymax),
            )
        fig.suptitle(f"Layer-Jacobian singular values ({variant}); grey: no BN, blue: BN")
        return []

    return animation.FuncAnimation(fig, frame, frames=len(steps), interval=600)


PERCENTILES = {f"preact_p{q}": f"{q}th percentile" for q in (85, 50, 15)}


def percentile_bands(
    runs: pd.DataFrame, history: pd.DataFrame, layer: str, title: str | None = None, fig=None
) -> plt.Figure:
    """Ioffe & Szegedy's Fig. 1(b, c): the 15th, 50th and 85th percentiles over probe images
    of one unit's input to the nonlinearity (unit 0 of `layer`) against the step, one panel
    per normalization (mean over seeds, min-max band)."""
    rows = history[history["metric"].isin(PERCENTILES)]
    rows = with_config(rows[rows["layer"] == layer], runs, ["model.norm"])
    if rows.empty:
        raise ValueError(f"no preact_p* rows for layer {layer!r}")
    norms = ordered(rows["model.norm"], list(NORM_COLORS))
    fig, axes = _grid(len(norms), sharey=True, fig=fig)
    styles = {"style": "metric", "style_order": list(PERCENTILES), "dashes": DASHES[:3]}
    for ax, n in zip(axes, norms):
        sub = rows[rows["model.norm"] == n]
        ax.set(title=NORM_LABELS[n], xlabel="training step", ylabel=f"input to {layer}, unit 0")
        sns.lineplot(sub, **BAND, **styles, color=NORM_COLORS[n], ax=ax)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    hs = [
        Line2D([], [], color="black", dashes=DASHES[i], label=name)
        for i, name in enumerate(PERCENTILES.values())
    ]
    _legend(fig, hs, f"mean and min-max of {_seeds(rows)} seeds")
    return fig
