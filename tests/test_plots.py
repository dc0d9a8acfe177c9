"""Plot functions render hand-built tables with the expected axes and series."""

from __future__ import annotations

import pandas as pd
import pytest

from bnlab.figures import draw
from bnlab.plots import NORM_COLORS, accuracy_curves, curves, final_points, jacobian_histograms
from bnlab.records import JAC_BINS


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
    assert len(ax.collections) == 2  # one min-max band per setting
    band = ax.collections[0].get_paths()[0].vertices[:, 1]  # band of the first setting drawn
    assert band.min() == pytest.approx(0.1) and band.max() == pytest.approx(0.61)


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
    with pytest.raises(ValueError, match="no rows of metric 'loss'"):
        curves(runs, history, "loss")


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
    means = [line for line in ax.get_lines() if line.get_marker() in ("o", "s")]  # not caps
    lines = {line.get_color(): line for line in means}
    caps = sorted(
        y for line in ax.get_lines() if line.get_marker() == "_" for y in line.get_ydata()
    )
    assert caps == pytest.approx(sorted([0.90, 0.5, 0.94, 0.7, 0.95, 0.93, 0.97, 0.98]))
    none, bn = lines[NORM_COLORS["none"]], lines[NORM_COLORS["batch"]]
    assert tuple(none.get_ydata()) == pytest.approx((0.92, 0.6))
    assert tuple(bn.get_ydata()) == pytest.approx((0.96, 0.95))
    assert tuple(none.get_xdata()) == (0.1, 1.0)
    # categorical x: one tick per category, hue groups dodged around it
    cat = table.assign(where=table["optim.lr"].map({0.1: "low", 1.0: "high"}))
    ax = final_points(cat, "where", "test_acc").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["high", "low"]


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
