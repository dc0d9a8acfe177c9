"""Draw a named figure from a collected sweep: `python -m bnlab.figures NAME [--sweep DIR]`.

Reads SWEEP/runs.parquet and SWEEP/history.parquet (collecting first if they are missing) and
writes results/figures/NAME.png and NAME.svg.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from . import plots
from .collect import main as collect_main

# figure name -> plot function(runs, history) -> Figure
FIGURES = {
    "demo": plots.accuracy_curves,
}


def load_tables(sweep: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    if not (sweep / "runs.parquet").exists() and collect_main([str(sweep)]) != 0:
        raise SystemExit(f"error: nothing to draw: no collected runs in {sweep}")
    return pd.read_parquet(sweep / "runs.parquet"), pd.read_parquet(sweep / "history.parquet")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bnlab.figures", description=__doc__)
    p.add_argument("name", choices=sorted(FIGURES), help="figure to draw")
    p.add_argument("--sweep", type=Path, help="sweep folder (default results/sweeps/NAME)")
    p.add_argument("--out", type=Path, default=Path("results/figures"))
    args = p.parse_args(argv)
    sweep = args.sweep or Path("results/sweeps") / args.name
    runs, history = load_tables(sweep)
    runs = runs[runs["status"].isin(["finished", "diverged"])]
    fig = FIGURES[args.name](runs, history)
    args.out.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "svg"):
        fig.savefig(args.out / f"{args.name}.{ext}", dpi=150)
    print(f"wrote {args.out / args.name}.png and .svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
