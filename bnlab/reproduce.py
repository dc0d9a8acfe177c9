"""Reproduce everything: `bnlab reproduce` runs every experiment, collects each sweep,
writes the compact tables, draws every figure and writes the claims report.

All experiments train as one sweep (`bnlab train -m experiment=a,b,...`): Hydra's joblib
launcher with `--jobs` processes of one thread each, longest jobs first, so both cores stay
busy to the end; runs that experiments share are trained once. Finished members are skipped
(per-member resume), so an interrupted reproduction continues where it stopped. The sweep's
wall time and, per experiment, its runs' job-seconds, member-steps and time spent evaluating go to
results/tables/reproduction_times.csv (results go under --results: BNLAB_RESULTS for Hydra).

  bnlab reproduce                  # everything (about 95 minutes on a 2-core CPU)
  bnlab reproduce --extras         # and the extra studies of C20-C26 (about 40 minutes more)
  bnlab reproduce --only mlds2017_fig6 mlds2017_fig9
  bnlab reproduce --stage report   # collect, tables, figures, claims only
  bnlab reproduce --tiny --results /tmp/r   # a few steps, 2 seeds (smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from .experiments import EXTRAS, REPRODUCTION, experiments_of, figures_of, sweeps
from .records import JOBS_FILE, read_summary

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
    *(
        f"probes.{p}.every=8"
        for p in ("weights", "activations", "ics_train", "scale", "mismatch", "jacobian")
    ),
    *(f"probes.{p}.every=12" for p in ("ics_grad", "landscape")),
    "probes.grads.every=4",
]


def train(names: list[str], results: Path, jobs: int, extra: list[str]) -> tuple[int, float]:
    """Run the experiments as one sweep (bnlab's sweeper: every point of every experiment in
    its own sweep folder, shared runs once, longest jobs first); return exit code, wall s."""
    cmd = [
        sys.executable,
        "-m",
        "bnlab",
        "-m",
        f"experiment={','.join(names)}",
        *(
            [
                "hydra/launcher=joblib",
                f"hydra.launcher.n_jobs={jobs}",
                "hydra.launcher.batch_size=1",
            ]
            if jobs > 1
            else []
        ),
        *extra,
    ]
    print(f"== {len(names)} experiments -> {results / 'sweeps'}", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, env={**os.environ, "BNLAB_RESULTS": str(results)})
    return rc, time.perf_counter() - t0


def breakdown(names: list[str], results: Path) -> pd.DataFrame:
    """Per experiment, the runs its sweep planned (a run shared by several experiments counts
    for the first of them in this sweep): runs, members, member-steps and the wall seconds
    of its runs (each run is one single-thread job), and the seconds of that time the runs
    spent evaluating (eval_s; main() adds eval_pct = 100 eval_s / job_s)."""
    zero = {"runs": 0, "members": 0, "member_steps": 0, "job_s": 0.0, "eval_s": 0.0}
    rows = {n: {"experiment": n, **zero} for n in names}
    for sweep in sweeps(names):
        path = results / "sweeps" / sweep / JOBS_FILE
        for job in json.loads(path.read_text())["jobs"] if path.exists() else []:
            name = next(
                (o.split("=", 1)[1] for o in job["overrides"] if o.startswith("experiment=")), None
            )
            done = [read_summary(path.parent / job["dir"], s) for s in job["seeds"]]
            done = [d for d in done if d and "wall_s" in d]
            if name not in rows or not done:
                continue
            row = rows[name]
            row["runs"] += 1
            row["members"] += len(done)
            row["member_steps"] += sum(d["steps_done"] for d in done)
            row["job_s"] += max(d["wall_s"] for d in done)
            row["eval_s"] += max(d.get("eval_s", 0.0) for d in done)
    return pd.DataFrame(list(rows.values()))


def report(names: list[str], results: Path) -> int:
    """Collect the experiments' sweeps, write their compact tables and figures, then the claims
    report; nonzero if any stage fails (a figure or a measure that cannot be made included)."""
    from . import claims, figures, tables
    from .collect import main as collect_main

    failed = 0
    for sweep in sweeps(names):
        folder = results / "sweeps" / sweep
        if folder.is_dir():
            failed |= collect_main([str(folder)]) != 0
    failed |= tables.main(["--results", str(results), *sweeps(names)]) != 0
    drawn = figures_of([e for s in sweeps(names) for e in experiments_of(s)])  # runs exist
    failed |= figures.main([*drawn, "--results", str(results)]) != 0
    failed |= claims.main(["--results", str(results)]) != 0
    return int(failed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bnlab reproduce",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--only", nargs="+", choices=REPRODUCTION + EXTRAS, help="these experiments only"
    )
    p.add_argument("--extras", action="store_true", help="also the extra studies (C20-C26)")
    p.add_argument("--stage", choices=["all", "train", "report"], default="all")
    p.add_argument("--jobs", type=int, default=2, help="parallel jobs per sweep (default 2)")
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder")
    p.add_argument("--tiny", action="store_true", help="a few steps and 2 seeds per point")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every point")
    args = p.parse_args(argv)
    names = args.only or REPRODUCTION + (EXTRAS if args.extras else [])
    rc = 0
    if args.stage in ("all", "train"):
        rc, wall = train(
            names, args.results, args.jobs, (TINY if args.tiny else []) + args.overrides
        )
        times = breakdown(names, args.results)
        out = args.results / "tables" / "reproduction_times.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists() and args.only:  # keep the other experiments' rows
            old = pd.read_csv(out)
            times = pd.concat([old[~old["experiment"].isin([*names, "all"])], times])
        total = {"experiment": "all", **times.drop(columns="experiment").sum().to_dict()}
        times = pd.concat([times, pd.DataFrame([{**total, "wall_s": wall}])], ignore_index=True)
        times = times.astype({c: "int64" for c in ("runs", "members", "member_steps")})
        times["eval_pct"] = 100 * times["eval_s"] / times["job_s"]
        times.to_csv(out, index=False, float_format="%.1f")
        print(f"training: exit {rc}, {wall:.0f} s wall, {total['job_s']:.0f} job-seconds; {out}")
    if args.stage in ("all", "report"):
        rc |= report(names, args.results)
    return rc


if __name__ == "__main__":
    sys.exit(main())
