"""Seed statistics of a collected sweep: `python -m bnlab.summary SWEEP_DIR [--by COL ...]`.

Prints (and with --out writes as CSV) mean, std, min and max over seeds of summary metrics
(test_acc and the test_acc_<mode> columns of train.final_eval), grouped by config columns.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


def seed_stats(runs: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """One row per group: n seeds, and mean/std/min/max of each metric over its members."""
    done = runs[runs["status"].isin(["finished", "diverged"])]
    stats = done.groupby(by)[metrics].agg(["mean", "std", "min", "max"])
    stats.columns = [f"{m}_{s}" for m, s in stats.columns]
    stats.insert(0, "seeds", done.groupby(by)["seed"].nunique())
    return stats.reset_index()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bnlab.summary", description=__doc__)
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("--by", nargs="+", default=["model.norm"], help="config columns to group by")
    p.add_argument("--metrics", nargs="+", help="default: test_acc and every test_acc_<mode>")
    p.add_argument("--out", type=Path, help="also write the table here (CSV)")
    args = p.parse_args(argv)
    runs = pd.read_parquet(args.sweep_dir / "runs.parquet")
    if "test_acc" not in runs:
        print(f"error: {args.sweep_dir}/runs.parquet has no finished runs", file=sys.stderr)
        return 1
    metrics = args.metrics or ["test_acc"] + sorted(
        c for c in runs if c.startswith("test_acc_") and runs[c].notna().any()
    )
    table = seed_stats(runs, args.by, metrics)
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(table.round(4).to_string(index=False))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False, float_format="%.5g")
    return 0


if __name__ == "__main__":
    sys.exit(main())
