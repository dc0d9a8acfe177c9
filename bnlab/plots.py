"""Plot functions: tables in, matplotlib Figure out, no file I/O.

Every function takes the collector's tables (runs: one row per member; history: long format)
and draws the mean over seeds with the min-max band across seeds. Colours are fixed per
concept so that a setting looks the same in every figure.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # figures are written to files; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

# One colour per setting, reused by every figure.
NORM_COLORS = {"none": "#4d4d4d", "batch": "#1f77b4"}
NORM_LABELS = {"none": "no BN", "batch": "BN"}


def with_config(history: pd.DataFrame, runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """History rows joined with the given config columns of their member."""
    return history.merge(runs[["run", "seed", *columns]], on=["run", "seed"], how="inner")


def accuracy_curves(
    runs: pd.DataFrame, history: pd.DataFrame, split: str = "test", facet: str = "model.activation"
) -> plt.Figure:
    """Accuracy vs step, BN vs no BN, one panel per value of `facet`.

    Lines: mean over seeds; bands: min-max over seeds.
    """
    rows = with_config(history, runs, ["model.norm", facet, "model.bn_eval"])
    rows = rows[(rows["metric"] == "acc") & (rows["split"] == split)]
    panels = sorted(rows[facet].unique())
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(4.5 * len(panels), 3.6),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    for ax, panel in zip(axes[0], panels):
        sub = rows[rows[facet] == panel]
        sns.lineplot(
            sub,
            x="step",
            y="value",
            hue="model.norm",
            estimator="mean",
            errorbar=("pi", 100),
            palette=NORM_COLORS,
            ax=ax,
            hue_order=[n for n in NORM_COLORS if n in set(sub["model.norm"])],
        )
        n_seeds = sub.groupby("run")["seed"].nunique().min()
        title = f"{facet.split('.')[-1]}={panel}"
        bn_eval = sorted(sub.loc[sub["model.norm"] != "none", "model.bn_eval"].unique())
        if bn_eval:  # the 2017 study evaluated BN with batch statistics: always say which
            title += f"\nBN evaluated with {' / '.join(bn_eval)} statistics"
        ax.set(
            title=title,
            xlabel="training step",
            ylabel=f"{split} accuracy",
            ylim=(
                max(0.0, sub["value"].quantile(0.05) - 0.02),
                min(1.0, sub["value"].max() + 0.01),
            ),
        )
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(
            handles,
            [NORM_LABELS.get(x, x) for x in labels],
            title=f"mean, min-max of {n_seeds} seeds",
            loc="lower right",
        )
    return fig
