# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 Explore the committed results
#
# **What it shows.** The compact tables under `results/tables/` (one row per trained member,
# written by `bnlab reproduce`): how to slice them, redraw two published figures
# with a different cut (per seed; population instead of running statistics), and recompute a
# number of the claims report (`results/CLAIMS.md`) from the tables. **Time:** a few seconds;
# no training.

# %%
from pathlib import Path

import pandas as pd

from bnlab.analysis import plots
from bnlab.analysis.claims import Tables, build_claims

TABLES = Path("../results/tables")
sorted(p.name for p in TABLES.glob("*.csv"))

# %% [markdown]
# Every table has the settings that vary in its sweep (`model.norm`, `model.activation`, ...),
# the member's `seed` and `status`, its final metrics (`test_acc`, `train_acc`, and with BN
# `test_acc_running` / `_population` / `_batch`) and the measures the claims use (documented
# in `bnlab/analysis/tables.py`).

# %%
study = pd.read_csv(TABLES / "mlds2017.csv")
study.pivot_table(
    index="model.activation", columns=["optim.name", "model.norm"], values="test_acc"
).round(4)

# %% [markdown]
# **Fig. 4 per seed.** The published figure shows one run per setting; here every seed is its
# own point, so the seed-to-seed spread is visible next to the BN effect.

# %%
sgd = study[study["optim.name"] == "sgd"]
fig = plots.final_points(
    sgd.assign(seed=sgd["seed"].astype(str)),
    "model.activation",
    "test_acc",
    hue="seed",
    facet="model.norm",
    ylabel="final test accuracy",
    title="Fig. 4 endpoints, one colour per seed",
)

# %% [markdown]
# **Fig. 6 with population statistics.** The batch-size figure evaluates BN with running
# statistics; the same members evaluated with Algorithm 2's population statistics:

# %%
batch = pd.read_csv(TABLES / "mlds2017_batch.csv")
batch = batch[batch["model.norm"].isin(["none", "batch"])]
batch = batch.assign(acc=batch["test_acc_population"].fillna(batch["test_acc"]))
fig = plots.final_points(
    batch,
    "data.batch_size",
    "acc",
    logx=True,
    ylabel="final test accuracy",
    title="Fig. 6 endpoints, BN with population statistics",
)

# %% [markdown]
# **A claims-report number from the tables.** `build_claims` is what writes the report; each
# claim holds its comparisons with the per-seed values of both arms. C5's comparison (relu +
# SGD + BN against relu + Adam without BN, 2017 protocol), recomputed with plain pandas:

# %%
claims = {c.key: c for c in build_claims(Tables(TABLES))}
c5 = claims["C5"]
cmp = c5.comparisons[0]
mean, lo, hi, paired = cmp.diff()
print(c5.statement, "->", c5.verdict)
print(cmp.label, f"difference {mean:+.4f} [{lo:+.4f}, {hi:+.4f}], verdict {c5.results[0].verdict}")

# %%
relu = study[study["model.activation"] == "relu"].set_index("seed")
sgd_bn = relu[(relu["optim.name"] == "sgd") & (relu["model.norm"] == "batch")]["test_acc"]
adam_none = relu[(relu["optim.name"] == "adam") & (relu["model.norm"] == "none")]["test_acc"]
by_hand = (sgd_bn - adam_none).mean()
assert abs(by_hand - mean) < 1e-9, (by_hand, mean)
assert len(sgd_bn) == 5 and paired  # 5 seeds, paired by seed (one sweep, shared initial weights)
by_hand
