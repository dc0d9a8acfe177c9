"""Best-learning-rate selection, shared by the claims (bnlab.analysis.claims) and the figures
(bnlab.analysis.figures): each arm at the learning rate its held-out accuracy chooses, never the
test set. Also the column check both use (require) and the error it raises (ClaimError)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..runs.collect import acc_or_zero
from .sequential import is_confirmation

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
                f"{name} has no column {col!r}; bnlab/analysis/claims/ and "
                "bnlab/analysis/tables.py must agree on the measures' names "
                "(or rerun `bnlab tables`)"
            )
    return table


def with_acc0(table: pd.DataFrame) -> pd.DataFrame:
    """The table with acc0: final test accuracy, diverged members counting as 0 (acc_or_zero)."""
    return table.assign(acc0=acc_or_zero(require(table, "test_acc")))


def at_best_lr(t: pd.DataFrame, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """The members of each arm (activation x norm x placement, and the `extra` columns) at the
    arm's own best learning rate: the lr whose selection members have the highest mean
    accuracy on the held-out training images at the end of the run (valid_acc; diverged
    members count as 0; the lowest of tied rates). The test set plays no part in the choice.

    Two stages (bnlab.analysis.sequential): only selection seeds choose; where an arm has
    confirmation seeds at its chosen rate, only they are returned, so the seeds that chose are not
    judged. ClaimError if confirmation seeds sit at another rate than the one chosen (the selection
    changed after they were trained). Adds acc0 (final test accuracy, diverged = 0)."""
    t = with_acc0(require(t, "valid_acc", "optim.lr", *extra))
    t = t.assign(valid0=t["valid_acc"].where(t["status"] == "finished", 0.0))
    keys = [k for k in [*ARM_KEYS, *extra] if k in t]
    confirming = t["seed"].map(is_confirmation)
    chooser = t[~confirming]
    mean = chooser.groupby([*keys, "optim.lr"], dropna=False)["valid0"].transform("mean")
    top = mean == mean.groupby([chooser[k] for k in keys], dropna=False).transform("max")
    lr = chooser["optim.lr"].where(top)  # the best lr (the lowest of tied ones), per arm
    best = lr.groupby([chooser[k] for k in keys], dropna=False).min().rename("best_lr")
    arm = t[keys].astype(object).where(t[keys].notna(), "-")  # NaN keys match each other
    chosen = pd.merge(
        arm, best.reset_index().astype({k: object for k in keys}).fillna("-"), how="left"
    )["best_lr"].to_numpy()
    at_best = np.isclose(t["optim.lr"], chosen)
    stray = t[confirming & ~at_best]
    if len(stray):
        row = stray.iloc[0]
        raise ClaimError(
            f"{t.attrs.get('table', 'the table')}: confirmation seed {int(row['seed'])} of "
            f"{', '.join(f'{k}={row[k]}' for k in keys)} was trained at lr {row['optim.lr']:g}, "
            "not at the rate the selection seeds choose now; rerun `bnlab reproduce --only` "
            "for its experiment"
        )
    confirmed = pd.Series(confirming & at_best).groupby([arm[k] for k in keys]).transform("any")
    out = t[at_best & (confirming | ~confirmed.to_numpy())]
    out.attrs = t.attrs
    return out
