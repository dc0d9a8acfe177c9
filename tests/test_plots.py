"""Plot functions render hand-built tables with the expected axes and series."""

from __future__ import annotations

import pandas as pd
import pytest

from bnlab.plots import NORM_COLORS, accuracy_curves


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
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["no BN", "BN"]
    assert ax.get_xlabel() == "training step" and ax.get_ylabel() == "test accuracy"
    assert "BN evaluated with running statistics" in ax.get_title()
    mean_lines = [line for line in ax.get_lines() if len(line.get_xdata()) == 3]
    means = sorted(tuple(line.get_ydata()) for line in mean_lines)
    assert means[0] == pytest.approx((0.105, 0.355, 0.605))
    assert means[1] == pytest.approx((0.205, 0.455, 0.705))
    colors = {line.get_color() for line in mean_lines}
    assert colors == {NORM_COLORS["none"], NORM_COLORS["batch"]}
    assert len(ax.collections) == 2  # one min-max band per setting
