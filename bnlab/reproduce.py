"""Reproduce everything: `bnlab reproduce` runs every experiment, collects each sweep,
writes the compact tables, draws every figure and writes the claims report.

All experiments train as one sweep (`bnlab train -m experiment=a,b,...`): Hydra's joblib
launcher with `--jobs` processes of one thread each, longest jobs first, so both cores stay
busy to the end; runs that experiments share are trained once. Finished members are skipped
(per-member resume), so an interrupted reproduction continues where it stopped. The sweep's
wall time and, per experiment, its runs' job-seconds, member-steps and time spent evaluating go to
results/tables/reproduction_times.csv (results go under --results: BNLAB_RESULTS for Hydra).

  bnlab reproduce                  # everything (about 60 minutes on a 2-core CPU)
  bnlab reproduce --extras         # and the extra studies of C20-C28 (about 50 minutes more)
  bnlab reproduce --only mlds2017_fig6 mlds2017_fig9
  bnlab reproduce --stage report   # collect, tables, figures, claims only
  bnlab reproduce --tiny --results /tmp/r   # a few steps, 2 seeds (smoke test)
  bnlab reproduce --check study_bias        # retrain 2 runs, compare with the committed table

A partial run (--only) replaces only its experiments' rows: the other experiments' tables,
running_stats rows and timing rows stay as they were, and the claims report is rebuilt from
the merged tables. The timing file's total row ('all') is the last full run's: recomputed when
this run trained every experiment of the default reproduction (the extras' rows, measured by
other runs, stay beside it and are not in it), otherwise kept.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .analysis.sequential import is_confirmation
from .confirm import confirm
from .runs.experiments import (
    EXPERIMENTS,
    EXTRAS,
    REPRODUCTION,
    TIMES,
    experiments_of,
    figures_of,
    sweep_points,
    sweeps,
)
from .runs.records import JOBS_FILE, read_summary

TIME_COLUMNS = [
    "experiment",
    "runs",
    "members",
    "member_steps",
    "job_s",
    "eval_s",
    "wall_s",
    "eval_pct",
]
CHECK_RTOL = 1e-5  # --check: float32 rounding, after the tables' 6 significant digits

# every point of every experiment shortened to a smoke test (CI, `--tiny`)
TINY_STEPS = 24
TINY = [
    "seeds=[0,1]",
    f"train.steps={TINY_STEPS}",
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
            if name not in rows:
                continue
            seeds = job["seeds"]  # a two-stage experiment's confirmation seeds: their own row
            if EXPERIMENTS[name].confirm:
                seeds = [s for s in seeds if not is_confirmation(s)]
            done = [read_summary(path.parent / job["dir"], s) for s in seeds]
            done = [d for d in done if d and "wall_s" in d]
            if not done:
                continue
            row = rows[name]
            row["runs"] += 1
            row["members"] += len(done)
            row["member_steps"] += sum(d["steps_done"] for d in done)
            row["job_s"] += max(d["wall_s"] for d in done)
            row["eval_s"] += max(d.get("eval_s", 0.0) for d in done)
    return pd.DataFrame(list(rows.values()))


def write_times(times: pd.DataFrame, wall: float, out: Path, full: bool) -> Path:
    """Write this run's timing rows into `out` in place of their experiments' earlier rows,
    keeping the rows of experiments it did not run (each experiment's last measured row). The
    total row 'all' is the last full run's: this run's rows summed, with its wall time, when
    it trained every experiment of the default reproduction (`full`; extras or not) or the
    file holds no other rows; otherwise the total row is kept as it was (a sum over rows of
    different runs would be no run's time)."""
    total = {"experiment": "all", **times.drop(columns="experiment").sum().to_dict()}
    timed = times["job_s"].where(times["job_s"] > 0)  # nothing timed: no percentage
    times = times.assign(eval_pct=100 * times["eval_s"] / timed)
    old = pd.read_csv(out) if out.exists() else times.iloc[:0]
    kept = old[~old["experiment"].isin([*times["experiment"], "all"])]
    if full or kept.empty:
        total = {**total, "wall_s": wall, "eval_pct": 100 * total["eval_s"] / total["job_s"]}
        last = pd.DataFrame([total])
    else:
        last = old[old["experiment"] == "all"]
        print(f"{out.name}: other experiments' rows kept; total row left as the last full run's")
    order = [e for e in dict.fromkeys([*old["experiment"], *times["experiment"]]) if e != "all"]
    rows = pd.concat([kept, times]).set_index("experiment").loc[order].reset_index()
    merged = pd.concat([rows, last], ignore_index=True).reindex(columns=TIME_COLUMNS)
    merged = merged.astype({c: "int64" for c in ("runs", "members", "member_steps")})
    out.parent.mkdir(parents=True, exist_ok=True)
    merged.to_csv(out, index=False, float_format="%.1f")
    return out


def full_tables(tables: Path, steps: int) -> list[str]:
    """The per-member tables in `tables` whose members trained more than `steps` steps."""
    out = []
    for path in sorted(Path(tables).glob("*.csv")):
        with contextlib.suppress(ValueError, KeyError, pd.errors.ParserError):
            done = pd.read_csv(path, usecols=["steps_done"])["steps_done"].max()
            if done > steps:
                out.append(f"{path.name}: {int(done):,} steps")
    return out


def report(names: list[str], results: Path) -> int:
    """Collect the experiments' sweeps, write their compact tables and figures, then the claims
    report; nonzero if any stage fails (a figure or a measure that cannot be made included)."""
    from .analysis import figures, tables
    from .analysis.claims import cli as claims
    from .runs.collect import main as collect_main

    failed = 0
    here = [s for s in sweeps(names) if (results / "sweeps" / s).is_dir()]  # runs exist
    for sweep in here:
        failed |= collect_main([str(results / "sweeps" / sweep)]) != 0
    failed |= tables.main(["--results", str(results), *sweeps(names)]) != 0
    drawn = figures_of([e for s in here for e in experiments_of(s)])  # others: kept as they are
    if drawn:
        failed |= figures.main([*drawn, "--results", str(results)]) != 0
    failed |= claims.main(["--results", str(results)]) != 0
    return int(failed)


def sample_runs(runs: list[str], n: int) -> list[str]:
    """n of these runs, spread evenly over their sorted names (the same every time)."""
    runs = sorted(runs)
    return [runs[i] for i in sorted(set(np.linspace(0, len(runs) - 1, n).round().astype(int)))]


def compare(new: pd.DataFrame, old: pd.DataFrame) -> pd.DataFrame:
    """Per numeric result column of both tables, over the members of `new`: the largest
    absolute difference (inf where one side is empty and the other not) and whether it is
    within float32 rounding (CHECK_RTOL x max(1, |committed|)). Columns `new` leaves all empty
    (measures a sample cannot make, such as pairings with runs not retrained) are left out."""
    key = ["run", "seed"]
    both = new.merge(old, on=key, suffixes=("", "_old"), validate="one_to_one")
    settings = ("data.", "model.", "optim.", "train.", "probes.")
    rows = []
    for col in new.select_dtypes(["number", "bool"]).columns:
        if col == "seed" or col.startswith(settings) or f"{col}_old" not in both:
            continue
        a, b = both[col].astype(float), both[f"{col}_old"].astype(float)
        if a.isna().all():
            continue
        diff = (a - b).abs().where(a.notna() & b.notna(), np.inf).where(a.notna() | b.notna(), 0)
        tol = CHECK_RTOL * np.maximum(1.0, b.abs().fillna(0))
        rows.append({"column": col, "max_abs_diff": diff.max(), "ok": bool((diff <= tol).all())})
    return pd.DataFrame(rows, columns=["column", "max_abs_diff", "ok"])


def check(name: str, results: Path, n_runs: int, overrides: list[str]) -> int:
    """Retrain `n_runs` runs of experiment `name` (each with every seed its table holds: a
    member trained with fewer ensemble mates rounds differently) from this code into a
    temporary folder and compare their table rows with RESULTS/tables/SWEEP.csv."""
    from .analysis import tables
    from .runs.collect import collect
    from .runs.compose import compose
    from .runs.train import run

    path = results / "tables" / f"{EXPERIMENTS[name].sweep}.csv"
    if not path.exists():
        print(
            f"error: --check {name}: no table {path}; give --results the folder holding it",
            file=sys.stderr,
        )
        return 2
    committed = pd.read_csv(path)
    points = sweep_points(name, overrides)
    ours = [r for r in committed["run"].unique() if r in points]
    if not ours:
        print(
            f"error: --check {name}: none of {path}'s runs is a point of experiment {name} "
            "(with these overrides); give the overrides its table was trained with",
            file=sys.stderr,
        )
        return 2
    picked = sample_runs(ours, n_runs)
    with tempfile.TemporaryDirectory(prefix="bnlab-check-") as tmp:
        for r in picked:
            seeds = sorted(int(s) for s in committed.loc[committed["run"] == r, "seed"])
            print(f"== retraining {r}, seeds {seeds}", flush=True)
            point = [o for o in points[r] if not o.startswith("seeds=")]
            cfg = compose([f"experiment={name}", *point, f"seeds={seeds}"])
            run(cfg, Path(tmp) / r)
        runs, history = collect(tmp)
        table = tables.measures(runs[runs["seed"].notna()], history)
        table.to_csv(Path(tmp) / "check.csv", index=False, float_format="%.6g")
        new = pd.read_csv(Path(tmp) / "check.csv")  # rounded as the committed table is
    diffs = compare(new, committed)
    print(f"{len(new)} members of {len(picked)} runs against {path}:")
    for row in diffs.itertuples():
        print(f"  {row.column:<40} {row.max_abs_diff:<12.3g} {'ok' if row.ok else 'DIFFERS'}")
    for r in picked:
        cols = compare(new[new["run"] == r], committed)
        differ = cols.loc[~cols["ok"], "column"].tolist()
        same = (cols["max_abs_diff"] == 0).all()
        state = f"{len(differ)} columns differ" if differ else "identical" if same else "within"
        print(f"  run {r}: {state}")
    bad = diffs.loc[~diffs["ok"], "column"].tolist()
    rule = f"{CHECK_RTOL:g} x max(1, |committed value|)"
    if bad:
        print(f"check failed: {', '.join(bad)} differ by more than float32 rounding ({rule})")
        return 1
    print(f"check passed: every column within float32 rounding ({rule})")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bnlab reproduce",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--only", nargs="+", choices=REPRODUCTION + EXTRAS, help="these experiments only"
    )
    p.add_argument("--extras", action="store_true", help="also the extra studies (C20-C28)")
    p.add_argument("--stage", choices=["all", "train", "report"], default="all")
    p.add_argument("--jobs", type=int, default=2, help="parallel jobs per sweep (default 2)")
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder")
    p.add_argument("--tiny", action="store_true", help="a few steps and 2 seeds per point")
    p.add_argument(
        "--check",
        metavar="NAME",
        choices=REPRODUCTION + EXTRAS,
        help="retrain a sample of NAME's runs into a temporary folder and compare them with "
        "its table in RESULTS/tables; exit 1 if any column differs beyond float32 rounding",
    )
    p.add_argument("--runs", type=int, default=2, help="runs --check retrains (default 2)")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every point")
    args = p.parse_args(argv)
    extra = (TINY if args.tiny else []) + args.overrides
    if args.check:
        if args.runs < 1:
            print(f"error: --runs {args.runs}: retrain at least 1 run (--runs 2)", file=sys.stderr)
            return 2
        return check(args.check, args.results, args.runs, extra)
    full = full_tables(args.results / "tables", TINY_STEPS) if args.tiny else []
    if full:
        print(
            f"error: --tiny --results {args.results}: its tables are full runs ({full[0]}; "
            f"{len(full)} tables) that {TINY_STEPS}-step tables would replace; give --results "
            "an empty folder (e.g. --results /tmp/tiny)",
            file=sys.stderr,
        )
        return 2
    names = args.only or REPRODUCTION + (EXTRAS if args.extras else [])
    rc = 0
    if args.stage in ("all", "train"):
        rc, wall = train(names, args.results, args.jobs, extra)
        times = breakdown(names, args.results)
        if rc == 0:  # the two-stage experiments' extension and confirmation (bnlab.confirm)
            t0 = time.perf_counter()
            rows = [confirm(n, args.results, args.jobs) for n in names if EXPERIMENTS[n].confirm]
            if rows:  # (an empty frame would make every column object: unformatted numbers)
                times = pd.concat([times, pd.DataFrame(rows, columns=times.columns)])
            wall += time.perf_counter() - t0
        full = set(REPRODUCTION) <= set(names)
        out = write_times(times, wall, args.results / "tables" / TIMES, full)
        print(f"training: exit {rc}, {wall:.0f} s wall, {times['job_s'].sum():.0f} job-s; {out}")
    if args.stage in ("all", "report"):
        rc |= report(names, args.results)
    return rc


if __name__ == "__main__":
    sys.exit(main())
