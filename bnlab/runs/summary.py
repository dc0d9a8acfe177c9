"""Seed statistics of a collected sweep: `bnlab summary SWEEP_DIR [--by COL ...]`.

Prints (and with --out writes as CSV) mean, std, min and max over seeds of summary metrics
(test_acc and the test_acc_<mode> columns of train.final_eval), one row per configuration:
grouped by every setting that varies in the sweep, unless --by names the columns.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .collect import read_tables
from .records import DONE_STATUSES


def keys(column: pd.Series) -> pd.Series:
    """A setting's values as grouping keys: null ('null') is a value of its own, never
    dropped (pandas' groupby and nunique skip NaN) nor filled with a default."""
    return column.astype(object).where(column.notna(), "null").astype(str)


def varying(runs: pd.DataFrame) -> list[str]:
    """The config columns ('model.norm', ...) whose value differs between members, null
    counting as a value."""
    return [c for c in runs.columns if "." in c and keys(runs[c]).nunique() > 1]


def seed_stats(runs: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """One row per group: n seeds, and mean/std/min/max of each metric over its members."""
    done = runs[runs["status"].isin(DONE_STATUSES)]
    if not by:  # nothing varies: one group
        done = done.assign(configuration="all")
        by = ["configuration"]
    done = done.assign(**{c: keys(done[c]) for c in by})
    groups = done.groupby(by)
    stats = groups[metrics].agg(["mean", "std", "min", "max"])
    stats.columns = [f"{m}_{s}" for m, s in stats.columns]
    stats.insert(0, "seeds", groups["seed"].nunique())
    stats.insert(1, "diverged", done.assign(d=done["status"] == "diverged").groupby(by)["d"].sum())
    return stats.reset_index()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bnlab summary", description=__doc__)
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("--by", nargs="+", help="config columns to group by (default: all varying)")
    p.add_argument("--metrics", nargs="+", help="default: test_acc and every test_acc_<mode>")
    p.add_argument("--out", type=Path, help="also write the table here (CSV)")
    args = p.parse_args(argv)
    try:
        runs, _ = read_tables(args.sweep_dir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not runs["status"].isin(DONE_STATUSES).any():
        print(f"error: {args.sweep_dir} has no finished members yet", file=sys.stderr)
        return 1
    by = args.by if args.by is not None else varying(runs)
    unknown = [c for c in by if c not in runs]
    if unknown:
        print(
            f"error: --by {' '.join(unknown)}: no such column; varying settings: "
            f"{', '.join(varying(runs)) or 'none'}",
            file=sys.stderr,
        )
        return 2
    metrics = args.metrics or ["test_acc"] + sorted(
        c for c in runs if c.startswith("test_acc_") and runs[c].notna().any()
    )
    unknown = [m for m in metrics if m not in runs]
    if unknown:
        numeric = [c for c in runs if c.startswith(("test_", "train_", "best_"))]
        print(
            f"error: --metrics {' '.join(unknown)}: no such column; choose from "
            f"{', '.join(numeric)}",
            file=sys.stderr,
        )
        return 2
    table = seed_stats(runs, by, metrics)
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(table.round(4).to_string(index=False))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False, float_format="%.5g")
    return 0


if __name__ == "__main__":
    sys.exit(main())
