# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 Quickstart: one run from Python, its history, one figure
#
# **What it shows.** How to train BN vs no BN from Python through `bnlab.run` (the same
# function the `bnlab train` command calls), read the run folder with pandas and draw the
# learning curves with `bnlab.analysis.plots`. **Time:** about 30 s on a laptop CPU (two short runs
# of 600 steps, 3 seeds each).
#
# MNIST is found as by every bnlab command: `$BNLAB_DATA_ROOT` (a folder holding
# `MNIST/raw/`), else the checkout's `data/` folder (what `make demo` sets up), else the
# per-user cache folder; `bnlab data fetch` puts it there, and a run downloads it on first use.

# %%
import tempfile
from pathlib import Path

import pandas as pd

from bnlab import compose, run
from bnlab.analysis.plots import curves
from bnlab.runs.collect import collect

OUT = Path(tempfile.mkdtemp(prefix="bnlab_quickstart_"))

# %% [markdown]
# A run is configured by overrides, exactly as on the command line: `bnlab.compose` takes
# what `bnlab train` takes (config groups such as `optim=adam` and `experiment=...`
# included), checks every value against the schema in `bnlab/runs/config.py` and refuses bad ones
# with a message naming the field. Here: the 2017 study's sigmoid network at a learning rate that
# trains quickly (0.01 on the summed loss), with and without BN, three seeds trained together;
# the weights probe fires every 50 steps (its default, 500, would give two points here).

# %%
summaries = {}
for norm in ("none", "batch"):
    cfg = compose(
        [
            f"model.norm={norm}",
            "model.activation=sigmoid",
            "optim.lr=0.01",
            "train.steps=600",
            "train.eval_every=50",
            "probes.weights.every=50",
            "train.progress=false",
            "seeds=[0,1,2]",
        ]
    )
    summaries[norm] = run(cfg, OUT / f"norm={norm}")
pd.DataFrame(
    [
        {"norm": n, **{k: s[k] for k in ("seed", "status", "test_acc", "wall_s")}}
        for n, ss in summaries.items()
        for s in ss
    ]
)

# %% [markdown]
# Each run folder holds `config.yaml`, and per seed `history.csv` (long format: step, split,
# metric, layer, value), `summary.json` and `model.pt`. The collector turns a folder of runs
# into two tables: `runs` (one row per member, config fields as columns) and `history`.

# %%
runs, history = collect(OUT)
print(sorted(history["metric"].unique())[:12], "...")
history[(history["metric"] == "acc") & (history["split"] == "test")].pivot_table(
    index="step", columns=["run", "seed"], values="value"
).tail()

# %% [markdown]
# Any recorded metric can be drawn the same way; here test accuracy and the mean |W2| that
# the weights probe records.

# %%
fig = curves(runs, history, "acc", ylabel="test accuracy", title="sigmoid, SGD lr 0.01")

# %%
fig = curves(runs, history, "w_mean_abs", split="train", layer="fc2", ylabel="mean |W2|")

# %% [markdown]
# Checks on what was computed (a broken notebook fails CI here).

# %%
final = runs.groupby("model.norm")["test_acc"].mean()
assert set(runs["status"]) == {"finished"} and len(runs) == 6
assert final["batch"] > 0.85 and final["none"] > 0.5, final
assert history["step"].max() == 600
weight_steps = history.loc[history["metric"] == "w_mean_abs", "step"].unique()
assert len(weight_steps) == 13, weight_steps  # every 50 steps, 0 to 600: a curve, not a line
final
