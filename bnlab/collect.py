"""Turn a sweep folder into two tidy tables: `python -m bnlab.collect SWEEP_DIR`.

Writes SWEEP_DIR/runs.parquet (one row per member: every config field as a column named as
its override, plus seed, status, test_acc, steps_done, wall_s, ...) and
SWEEP_DIR/history.parquet (run, seed, step, split, metric, layer, value). Safe to run at any
time: members without a summary appear with status 'unfinished', and their history is read up
to its last complete row. Running it again gives the same tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .records import JOBS_FILE, read_config, read_history, read_summary

SUMMARY_COLUMNS = [
    "status",
    "test_acc",
    "best_test_acc",
    "test_loss",
    "train_acc",
    "train_loss",
    "steps_done",
    "wall_s",
    "eval_s",
    "steps_per_s",
    "error",
]


# test metrics under extra BN evaluation modes (train.final_eval), e.g. test_acc_population
EVAL_MODE_KEYS = ("test_acc_", "test_loss_")


def flatten(config: dict, prefix: str = "") -> dict:
    """Nested config -> {'model.norm': 'batch', 'model.widths': '[100,100]', ...}.

    Lists become their override spelling so that columns stay hashable for grouping.
    """
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list):
            out[name] = "[" + ",".join(str(v) for v in value) + "]"
        else:
            out[name] = value
    return out


def missing_members(root: Path, present: set[str]) -> list[dict]:
    """Rows (status 'missing') for the members of jobs the sweeper planned (jobs.json) whose
    run folder does not exist yet: not started, or killed before writing anything."""
    jobs_file = root / JOBS_FILE
    if not jobs_file.exists():
        return []
    jobs = json.loads(jobs_file.read_text())["jobs"]
    return [
        {"run": job["dir"], "seed": seed, "status": "missing"}
        for job in jobs
        if job["dir"] not in present
        for seed in job["seeds"]
    ]


def find_runs(sweep_dir: str | Path) -> list[Path]:
    """Run folders (those holding a bnlab config.yaml) under sweep_dir, sorted."""
    root = Path(sweep_dir)
    runs = [p.parent for p in root.rglob("config.yaml") if ".hydra" not in p.parts]
    return sorted(runs)


def collect(sweep_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The (runs, history) tables of a sweep folder, without writing anything."""
    root = Path(sweep_dir)
    rows, histories = [], []
    for run_dir in find_runs(root):
        config = read_config(run_dir)
        name = run_dir.relative_to(root).as_posix()
        fields = flatten({k: v for k, v in config.items() if k != "seeds"})
        seeds = config.get("seeds")
        if not (isinstance(seeds, list) and all(isinstance(s, int) for s in seeds)):
            failure = run_dir / "failure.json"  # a config too broken to name its members
            summary = json.loads(failure.read_text()) if failure.exists() else {}
            rows.append(
                {
                    "run": name,
                    "seed": None,
                    **fields,
                    "status": "failed",
                    **{c: summary.get(c) for c in SUMMARY_COLUMNS[1:]},
                }
            )
            continue
        for seed in seeds:
            summary = read_summary(run_dir, seed) or {"status": "unfinished"}
            rows.append(
                {
                    "run": name,
                    "seed": seed,
                    **fields,
                    **{c: summary.get(c) for c in SUMMARY_COLUMNS},
                    **{k: v for k, v in summary.items() if k.startswith(EVAL_MODE_KEYS)},
                }
            )
            hist = read_history(run_dir, seed)
            if len(hist):
                histories.append(hist.assign(run=name, seed=seed))
    rows += missing_members(root, {r["run"] for r in rows})
    runs = pd.DataFrame(rows, columns=None if rows else ["run", "seed", *SUMMARY_COLUMNS])
    for col in (
        "test_acc",
        "best_test_acc",
        "test_loss",
        "train_acc",
        "train_loss",
        "wall_s",
        "eval_s",
        "steps_per_s",
    ):
        runs[col] = runs[col].astype("float64")
    runs["steps_done"] = runs["steps_done"].astype("Int64")
    runs["error"] = runs["error"].astype("string")
    columns = ["run", "seed", "step", "split", "metric", "layer", "value"]
    history = (
        pd.concat(histories, ignore_index=True)[columns]
        if histories
        else pd.DataFrame(columns=columns)
    )
    return runs.reset_index(drop=True), history


def select(df: pd.DataFrame, **where) -> pd.DataFrame:
    """Rows whose columns equal the given values (a list: any of them); keys use '__' for '.'
    (model__norm='batch'). Floats compare with a relative tolerance, since settings read back
    from CSV may differ in the last bit (optim__lr=0.1)."""
    mask = pd.Series(True, index=df.index)
    for key, value in where.items():
        col = key.replace("__", ".")
        if isinstance(value, list | tuple):
            mask &= df[col].isin(value)
        elif isinstance(value, float):
            mask &= np.isclose(df[col].astype(float), value)
        else:
            mask &= df[col] == value
    return df[mask]


def acc_or_zero(runs: pd.DataFrame) -> pd.Series:
    """Final test accuracy with diverged members scored 0 (they did not train), for studies
    where divergence is the outcome of interest (learning rate, initialisation scale)."""
    return runs["test_acc"].where(runs["status"] == "finished", 0.0)


def status_counts(runs: pd.DataFrame) -> dict:
    """{status: number of members} of a runs table."""
    return runs["status"].value_counts().to_dict() if len(runs) else {}


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bnlab.collect",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep_dir", help="a sweep folder (hydra.sweep.dir) or a single run folder")
    args = p.parse_args(argv)
    root = Path(args.sweep_dir)
    if not root.is_dir():
        print(f"error: {root} is not a folder", file=sys.stderr)
        return 2
    runs, history = collect(root)
    if runs.empty:
        print(f"error: no bnlab runs (folders with config.yaml) under {root}", file=sys.stderr)
        return 1
    _write_parquet(runs, root / "runs.parquet")
    _write_parquet(history, root / "history.parquet")
    counts = status_counts(runs)
    done = counts.get("finished", 0) + counts.get("diverged", 0)
    detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(
        f"{root}: done {done}/{len(runs)} members ({detail}); "
        f"wrote runs.parquet ({len(runs)} rows), history.parquet ({len(history)} rows)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
