"""Plot functions render hand-built tables with the expected axes and series."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from bnlab.analysis.figures import draw
from bnlab.analysis.plots import (
    NORM_COLORS,
    accuracy_curves,
    curves,
    final_points,
    jacobian_histograms,
    percentile_bands,
)
from bnlab.measurement.probes.jacobian import JAC_EDGES as JAC_BINS


def _tables():
    runs = pd.DataFrame(
        {
            "run": ["a", "a", "b", "b"],
            "seed": [0, 1, 0, 1],
            "model.norm": ["none", "none", "batch", "batch"],
            "model.activation": ["sigmoid"] * 4,
            "model.bn_eval": ["running"] * 4,
        }
    )
    rows = []
    for run, seed in zip(runs["run"], runs["seed"]):
        for step in (0, 100, 200):
            acc = 0.1 + step / 400 + (0.1 if run == "b" else 0) + 0.01 * seed
            rows.append(
                {
                    "run": run,
                    "seed": seed,
                    "step": step,
                    "split": "test",
                    "metric": "acc",
                    "layer": "",
                    "value": acc,
                }
            )
    return runs, pd.DataFrame(rows)


def _band(collection) -> np.ndarray:
    """A fill_between band as rows (x, lowest y, highest y), by x."""
    xy = collection.get_paths()[0].vertices
    ys = [(x, xy[xy[:, 0] == x, 1]) for x in np.unique(xy[:, 0])]
    return np.array([(x, y.min(), y.max()) for x, y in ys])


def _minmax(rows: pd.DataFrame, by: str) -> np.ndarray:
    """The hand-computed statistic of a band: min and max over seeds of `value`, by x."""
    return rows.groupby(by)["value"].agg(["min", "max"]).reset_index().to_numpy(dtype=float)


def test_accuracy_curves_draw_mean_lines_with_seed_bands():
    runs, history = _tables()
    fig = accuracy_curves(runs, history)
    (ax,) = fig.axes
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["no BN", "BN"]
    assert "2 seeds" in legend.get_title().get_text()
    assert ax.get_xlabel() == "training step" and ax.get_ylabel() == "test accuracy"
    assert "BN evaluated with running stats" in fig.get_suptitle()
    mean_lines = [line for line in ax.get_lines() if len(line.get_xdata()) == 3]
    means = sorted(tuple(line.get_ydata()) for line in mean_lines)
    assert means[0] == pytest.approx((0.105, 0.355, 0.605))
    assert means[1] == pytest.approx((0.205, 0.455, 0.705))
    colors = {line.get_color() for line in mean_lines}
    assert colors == {NORM_COLORS["none"], NORM_COLORS["batch"]}
    assert len(ax.collections) == 2  # one min-max band per setting, in the legend's order
    for band, run in zip(ax.collections, ["a", "b"]):
        assert _band(band) == pytest.approx(_minmax(history[history["run"] == run], "step"))


def test_curves_facets_styles_and_missing_metric():
    runs, history = _tables()
    runs = pd.concat([runs, runs.assign(run=runs["run"] + "2")], ignore_index=True)
    runs["optim.name"] = ["sgd"] * 4 + ["adam"] * 4
    runs["model.activation"] = ["sigmoid"] * 4 + ["relu"] * 4
    history = pd.concat([history, history.assign(run=history["run"] + "2")], ignore_index=True)
    fig = curves(runs, history, "acc", facet="model.activation", style="optim.name")
    assert [ax.get_title() for ax in fig.axes] == ["activation=relu", "activation=sigmoid"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["no BN", "BN", "optimiser=adam", "optimiser=sgd"]
    styles = {line.get_linestyle() for line in fig.axes[0].get_lines()}
    assert styles == {"-"}  # relu panel holds only adam members: the first style
    sgd = fig.axes[1].get_lines()
    assert [line.get_linestyle() for line in sgd] == ["--", "--"]  # the second: dashed
    assert [len(ax.collections) for ax in fig.axes] == [2, 2]  # a band per norm and optimiser
    with pytest.raises(ValueError, match="no rows of metric 'loss'"):
        curves(runs, history, "loss")


def _errorbars(ax) -> np.ndarray:
    """seaborn's error bars (lines without markers, caps included) as (x, lowest, highest)."""
    bars = [line for line in ax.get_lines() if line.get_marker() in (None, "None", "")]
    xs = [
        (np.nanmedian(b.get_xdata()), np.nanmin(b.get_ydata()), np.nanmax(b.get_ydata()))
        for b in bars
    ]
    return np.array(sorted(xs))


def _svg(fig) -> bytes:
    out = io.BytesIO()
    with plt.rc_context({"svg.hashsalt": "test"}):
        fig.savefig(out, format="svg", metadata={"Date": None})
    plt.close(fig)
    return out.getvalue()


def test_final_points_mean_and_minmax_bars():
    table = pd.DataFrame(
        {
            "seed": [0, 1, 2] * 4,
            "model.norm": ["none"] * 6 + ["batch"] * 6,
            "optim.lr": ([0.1] * 3 + [1.0] * 3) * 2,
            "test_acc": [0.90, 0.92, 0.94, 0.5, 0.6, 0.7, 0.95, 0.96, 0.97, 0.93, 0.94, 0.98],
        }
    )
    fig = final_points(table, "optim.lr", "test_acc", logx=True)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    means = [line for line in ax.get_lines() if line.get_marker() in ("o", "s")]
    lines = {line.get_color(): line for line in means}
    none, bn = lines[NORM_COLORS["none"]], lines[NORM_COLORS["batch"]]
    assert tuple(none.get_ydata()) == pytest.approx((0.92, 0.6))
    assert tuple(bn.get_ydata()) == pytest.approx((0.96, 0.95))
    assert tuple(none.get_xdata()) == pytest.approx((0.1, 1.0)) and none.get_linestyle() == "-"
    bars = [(0.1, 0.90, 0.94), (0.1, 0.95, 0.97), (1.0, 0.5, 0.7), (1.0, 0.93, 0.98)]
    assert _errorbars(ax) == pytest.approx(np.array(bars))  # one per (lr, norm): min-max
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.1", "1"]
    assert _svg(final_points(table, "optim.lr", "test_acc")) == _svg(
        final_points(table, "optim.lr", "test_acc")
    )  # no bootstrap: the same tables give the same file
    # categorical x: one tick per category, hue groups dodged around it, not joined
    cat = table.assign(where=table["optim.lr"].map({0.1: "low", 1.0: "high"}))
    ax = final_points(cat, "where", "test_acc").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["high", "low"]
    points = {line.get_color(): line for line in ax.get_lines() if line.get_marker() == "o"}
    assert points[NORM_COLORS["none"]].get_linestyle() == "None"
    assert tuple(points[NORM_COLORS["none"]].get_xdata()) == pytest.approx((-0.2, 0.8))
    bars = [(-0.2, 0.5, 0.7), (0.2, 0.93, 0.98), (0.8, 0.90, 0.94), (1.2, 0.95, 0.97)]
    assert _errorbars(ax) == pytest.approx(np.array(bars))


def test_bands_and_bars_are_min_max_over_seeds_not_a_bootstrap_or_sd():
    seeds = range(8)  # enough seeds for a bootstrap interval or the sd to be narrower
    runs = pd.DataFrame(
        {"run": "a", "seed": seeds, "model.norm": "batch", "model.bn_eval": "batch"}
    )
    history = pd.DataFrame(
        {
            "run": "a",
            "seed": s,
            "step": t,
            "split": "test",
            "metric": "loss",
            "layer": "",
            "value": v,
        }
        for s in seeds
        for t, v in ((0, s * s), (10, 10 - s))
    )
    ax = curves(runs, history, "loss").axes[0]
    assert _band(ax.collections[0]) == pytest.approx(_minmax(history, "step"))
    runs["test_acc"] = [s * s / 100 for s in seeds]
    ax = final_points(runs, "model.norm", "test_acc").axes[0]
    assert _errorbars(ax) == pytest.approx(np.array([(0, 0.0, 0.49)]))


def test_panels_sharing_y_keep_their_labels():
    table = pd.DataFrame(
        {
            "seed": [0, 1] * 4,
            "model.norm": ["none", "none", "batch", "batch"] * 2,
            "eval": ["running"] * 4 + ["batch"] * 4,
            "data.batch_size": [4] * 8,
            "acc": np.linspace(0.5, 0.9, 8),
        }
    )
    fig = final_points(table, "data.batch_size", "acc", facet="eval", sharey=True, ylabel="acc")
    assert [ax.yaxis.label.get_visible() for ax in fig.axes] == [True, True]


def test_percentile_bands_one_line_style_per_percentile():
    runs = pd.DataFrame({"run": ["a", "a"], "seed": [0, 1], "model.norm": ["batch", "batch"]})
    rows = [
        {
            "run": "a",
            "seed": seed,
            "step": step,
            "split": "test",
            "metric": f"preact_p{q}",
            "layer": "act3",
            "value": q / 100 + step + seed,
        }
        for seed in (0, 1)
        for step in (0, 10)
        for q in (15, 50, 85)
    ]
    history = pd.DataFrame(rows)
    fig = percentile_bands(runs, history, "act3")
    (ax,) = fig.axes
    assert ax.get_title() == "BN" and ax.get_ylabel() == "input to act3, unit 0"
    handles = fig.legends[0].legend_handles
    assert [line.get_linestyle() for line in ax.get_lines()] == ["-", "--", "--"]  # 2 dashed:
    dashes = [line._unscaled_dash_pattern for line in [*ax.get_lines(), *handles]]
    assert dashes[:3] == dashes[3:] and len(set(dashes)) == 3  # as in the legend, all distinct
    assert {line.get_color() for line in ax.get_lines()} == {NORM_COLORS["batch"]}
    for line, band, q in zip(ax.get_lines(), ax.collections, (85, 50, 15)):
        mine = history[history["metric"] == f"preact_p{q}"]
        assert tuple(line.get_ydata()) == pytest.approx((q / 100 + 0.5, q / 100 + 10.5))
        assert _band(band) == pytest.approx(_minmax(mine, "step"))
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["85th percentile", "50th percentile", "15th percentile"]


def test_jacobian_histograms_show_fractions_per_bin():
    runs = pd.DataFrame(
        {
            "run": ["a", "b"],
            "seed": [0, 0],
            "model.norm": ["none", "batch"],
            "model.activation": ["relu", "relu"],
        }
    )
    rows = []
    for run, hot in (("a", 3), ("b", 10)):
        for b in range(len(JAC_BINS) - 1):
            rows.append(
                {
                    "run": run,
                    "seed": 0,
                    "step": 100,
                    "split": "test",
                    "metric": f"jac_hist_{b:02d}",
                    "layer": "fc1",
                    "value": 30.0 if b == hot else (10.0 if b == hot + 1 else 0.0),
                }
            )
    fig = jacobian_histograms(runs, pd.DataFrame(rows), [("relu", "fc1")], [100])
    (ax,) = fig.axes
    heights = [p.get_data().values for p in ax.patches]  # StepPatch: outline and fill per norm
    assert any(h[3] == pytest.approx(0.75) and h[4] == pytest.approx(0.25) for h in heights)
    assert any(h[10] == pytest.approx(0.75) and h[11] == pytest.approx(0.25) for h in heights)
    assert all(h.sum() == pytest.approx(1.0) for h in heights)


def test_a_figure_redrawn_from_the_same_tables_is_the_same_svg_file(tmp_path):
    class Tables:  # what figures.draw reads the demo figure's tables from
        def load(self, name):
            return _tables()

    first = draw("demo", Tables(), tmp_path / "a")
    second = draw("demo", Tables(), tmp_path / "b")
    svg = [p for p in first if p.suffix == ".svg"][0]
    assert svg.read_bytes() == (tmp_path / "b" / svg.name).read_bytes()
    assert b"<dc:date>" not in svg.read_bytes() and len(second) == len(first)


def test_svg_ids_are_numbered_in_order_and_references_follow():
    from bnlab.analysis.figures import _numbered_ids

    svg = (
        '<clipPath id="pbc16143ac6"/><path id="m2f8cf21eb4"/><g clip-path="url(#pbc16143ac6)">'
        '<use xlink:href="#m2f8cf21eb4" fill="#1f77b4"/></g>'
    )
    assert _numbered_ids(svg) == (
        '<clipPath id="p0000"/><path id="m0001"/><g clip-path="url(#p0000)">'
        '<use xlink:href="#m0001" fill="#1f77b4"/></g>'
    )
