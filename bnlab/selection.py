"""Best-learning-rate selection, shared by the claims (bnlab.claims) and the figures
(bnlab.figures): each arm at the learning rate its held-out accuracy chooses, never the test
set. Also the column check both use (require) and the error it raises (ClaimError)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .collect import acc_or_zero

ARM_KEYS = ["model.activation", "model.norm", "model.placement"]
LR_SELECTION = "each arm's learning rate (on 5,000 held-out training images, never the test set)"


class ClaimError(ValueError):
    """A claim reads a column that its table lacks, or that no member it selects recorded:
    the report is not written (a renamed measure must not turn a claim inconclusive)."""


def require(table: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """The table, if it has these columns; ClaimError naming the table and the first absent."""
    for col in columns:
        if col not in table:
            name = table.attrs.get("table", "the table")
            raise ClaimError(
                f"{name} has no column {col!r}; bnlab/claims/ and bnlab/tables.py must agree "
                "on the measures' names (or rerun `bnlab tables`)"
            )
    return table


def with_acc0(table: pd.DataFrame) -> pd.DataFrame:
    """The table with acc0: final test accuracy, diverged members counting as 0 (acc_or_zero)."""
    return table.assign(acc0=acc_or_zero(require(table, "test_acc")))


def at_best_lr(t: pd.DataFrame, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """The members of each arm (activation x norm x placement, and the `extra` columns) at the
    arm's own best learning rate: the lr whose members have the highest mean accuracy on the
    held-out training images at the end of the run (valid_acc; diverged members count as 0).
    The test set plays no part in the choice. Adds acc0 (final test accuracy, diverged = 0)."""
    t = with_acc0(require(t, "valid_acc", "optim.lr", *extra))
    t = t.assign(valid0=t["valid_acc"].where(t["status"] == "finished", 0.0))
    keys = [k for k in [*ARM_KEYS, *extra] if k in t]
    mean = t.groupby([*keys, "optim.lr"], dropna=False)["valid0"].transform("mean")
    top = mean == mean.groupby([t[k] for k in keys], dropna=False).transform("max")
    lr = t["optim.lr"].where(top)  # the best lr (the lowest of tied ones), per arm
    best = lr.groupby([t[k] for k in keys], dropna=False).transform("min")
    out = t[np.isclose(t["optim.lr"], best)]
    out.attrs = t.attrs
    return out
