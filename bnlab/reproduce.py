"""Reproduce everything: `python -m bnlab.reproduce` runs every experiment, collects each sweep,
writes the compact tables, draws every figure and writes the claims report.

Finished members are skipped (per-member resume), so an interrupted reproduction continues
where it stopped. Each sweep runs with Hydra's joblib launcher, `--jobs` processes of one
thread each. Wall time per experiment goes to results/tables/reproduction_times.csv.

  python -m bnlab.reproduce                  # everything (about an hour on a 2-core CPU)
  python -m bnlab.reproduce --only mlds2017_fig6 mlds2017_fig9
  python -m bnlab.reproduce --stage report   # collect, tables, figures, claims only
  python -m bnlab.reproduce --tiny --results /tmp/r   # a few steps, 2 seeds (smoke test)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

# experiment (configs/experiment/NAME.yaml) -> its sweep folder under RESULTS/sweeps. Cheap
# experiments first; experiments sharing a folder reuse each other's finished runs.
EXPERIMENTS = {
    "mlds2017_fig2": "mlds2017_early",
    "mlds2017_fig3": "mlds2017_early",
    "mlds2017_mismatch": "mlds2017_mismatch",
    "santurkar2018_noisy_bn": "santurkar2018_noisy_bn",
    "study_lr": "study_lr",
    "study_init_scale": "study_init_scale",
    "study_placement": "study_placement",
    "study_dropout": "study_dropout",
    "study_bias": "study_bias",
    "study_order": "study_order",
    "mlds2017_fig4": "mlds2017",
    "mlds2017_fig5": "mlds2017",
    "mlds2017_fig1": "mlds2017",
    "santurkar2018_ics": "mlds2017",
    "santurkar2018_landscape": "mlds2017",
    "mlds2017_fig6": "mlds2017_batch",
    "mlds2017_fig9": "mlds2017_batch",
    "mlds2017_fig6_epochs": "mlds2017_batch_epochs",
    "ioffe2015_fig1": "ioffe2015",
}

# every point of every experiment shortened to a smoke test (CI, `--tiny`)
TINY = [
    "seeds=[0,1]",
    "train.steps=24",
    "train.epochs=null",
    "train.evals=0",
    "train.eval_every=8",
    "train.eval_dense_until=0",
    "model.population_batches=4",
    "probes.batch=64",
    "probes.jacobian_samples=8",
    *(f"probes.{p}.every=8" for p in ("weights", "activations", "mismatch", "jacobian")),
    *(f"probes.{p}.every=12" for p in ("ics_grad", "landscape")),
    "probes.grads.every=4",
]


def sweeps() -> list[str]:
    """The sweep folders, in first-use order."""
    return list(dict.fromkeys(EXPERIMENTS.values()))


def train(names: list[str], results: Path, jobs: int, extra: list[str]) -> pd.DataFrame:
    """Run the experiments' sweeps one after another; return their wall times."""
    rows = []
    for name in names:
        sweep = results / "sweeps" / EXPERIMENTS[name]
        cmd = [
            sys.executable,
            "-m",
            "bnlab",
            "-m",
            f"experiment={name}",
            f"hydra.sweep.dir={sweep}",
            *(["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []),
            *extra,
        ]
        print(f"== {name} -> {sweep}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        wall = time.perf_counter() - t0
        print(f"== {name}: exit {rc}, {wall:.0f} s", flush=True)
        rows.append({"experiment": name, "sweep": EXPERIMENTS[name], "exit": rc, "wall_s": wall})
    return pd.DataFrame(rows)


def report(results: Path) -> int:
    """Collect every sweep, write the compact tables, the figures and the claims report."""
    from . import claims, figures, tables
    from .collect import main as collect_main

    failed = 0
    for sweep in sweeps():
        folder = results / "sweeps" / sweep
        if folder.is_dir():
            failed |= collect_main([str(folder)]) != 0
    failed |= tables.main(["--results", str(results)]) != 0
    failed |= figures.main(["all", "--results", str(results)]) != 0
    failed |= claims.main(["--results", str(results)]) != 0
    return int(failed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bnlab.reproduce",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--only", nargs="+", choices=list(EXPERIMENTS), help="these experiments only")
    p.add_argument("--stage", choices=["all", "train", "report"], default="all")
    p.add_argument("--jobs", type=int, default=2, help="parallel jobs per sweep (default 2)")
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder")
    p.add_argument("--tiny", action="store_true", help="a few steps and 2 seeds per point")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every point")
    args = p.parse_args(argv)
    names = args.only or list(EXPERIMENTS)
    rc = 0
    if args.stage in ("all", "train"):
        times = train(names, args.results, args.jobs, (TINY if args.tiny else []) + args.overrides)
        out = args.results / "tables" / "reproduction_times.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists() and args.only:  # keep the other experiments' times
            old = pd.read_csv(out)
            times = pd.concat([old[~old["experiment"].isin(names)], times], ignore_index=True)
        times.to_csv(out, index=False, float_format="%.1f")
        rc = int((times["exit"] != 0).any())
        print(f"training: {times['wall_s'].sum():.0f} s in total; per experiment in {out}")
    if args.stage in ("all", "report"):
        rc |= report(args.results)
    return rc


if __name__ == "__main__":
    sys.exit(main())
