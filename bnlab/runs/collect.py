"""Turn a sweep folder into two tidy tables: `bnlab collect SWEEP_DIR`.

Writes SWEEP_DIR/runs.parquet (one row per member: every config field as a column named as
its override, plus seed, status, test_acc, steps_done, wall_s, ..., and where the run's code
came from: git_commit, git_dirty, torch_version, cpu_kernels, host; null_settings: the
settings the member's config sets to null, comma-separated, as parquet cannot tell a null
from a setting an older config lacks; absent where no config sets one) and
SWEEP_DIR/history.parquet (run, seed, step, split, metric, layer, value); both carry one
token, so a reader can tell that they come from the same collect (read_tables). Safe to run
at any time: members without a summary appear with status 'unfinished' (their history read
up to its last complete row),
members the sweep planned but has not started as 'missing', and members whose files cannot
be read as 'corrupt', with the file and the reason. Running it again gives the same tables.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from .records import (
    DONE_STATUSES,
    JOBS_FILE,
    atomic_path,
    check_member,
    flatten,
    member_dir,
    read_history,
    read_text,
)

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
    # provenance (records.provenance)
    "code_sha256",
    "git_commit",
    "git_dirty",
    "torch_version",
    "cpu_kernels",
    "host",
]
FLOAT_COLUMNS = [
    "test_acc",
    "best_test_acc",
    "test_loss",
    "train_acc",
    "train_loss",
    "wall_s",
    "eval_s",
    "steps_per_s",
]
STATUSES = ("finished", "diverged", "failed", "unfinished", "missing", "corrupt")

# test metrics under extra BN evaluation modes (train.final_eval), e.g. test_acc_population
EVAL_MODE_KEYS = ("test_acc_", "test_loss_")


def _corrupt(run: str, seed, path: Path, reason) -> dict:
    """A row for a member (or run, or job list) whose file cannot be read."""
    return {"run": run, "seed": seed, "status": "corrupt", "error": f"{path}: {reason}"}


def _read_dict(path: Path, read) -> dict:
    """A file that must hold a mapping (config.yaml, summary.json), or ValueError saying why."""
    try:
        value = read(path)
    except (OSError, ValueError, yaml.YAMLError) as e:
        reason = " ".join(str(e).split())[:200]
        raise ValueError(f"unreadable ({type(e).__name__}: {reason})") from None
    if not isinstance(value, dict):
        raise ValueError(f"holds a {type(value).__name__}, not a mapping")
    return value


ACCURACY, NON_NEGATIVE = (0.0, 1.0), (0.0, math.inf)
RANGES = {  # summary key -> (low, high) of its values (a loss may also be inf)
    "test_acc": ACCURACY,
    "best_test_acc": ACCURACY,
    "train_acc": ACCURACY,
    "test_loss": NON_NEGATIVE,
    "train_loss": NON_NEGATIVE,
    "wall_s": NON_NEGATIVE,
    "eval_s": NON_NEGATIVE,
    "steps_per_s": NON_NEGATIVE,
}
COUNTS = ("steps_done", "members", "epochs", "history_rows")  # whole numbers >= 0
TEXTS = ("error", "code_sha256", "git_commit", "torch_version", "cpu_kernels", "host", "device",
         "finished_at", "config_sha256", "history_sha256")  # fmt: skip


def _check_summary(summary: dict, seed: int) -> None:
    """ValueError naming the first field of a summary that is of the wrong type or out of
    range: a known status, accuracies in [0, 1], losses and times >= 0 (a loss may overflow
    to inf; nan only where the member diverged), whole counts, its own seed, and a test
    accuracy for every member that is done."""
    status = summary.get("status")
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    if status in DONE_STATUSES and summary.get("test_acc") is None:
        raise ValueError(f"status {status} without a test_acc")
    if summary.get("seed", seed) != seed or isinstance(summary.get("seed"), bool):
        raise ValueError(f"seed={summary.get('seed')!r}, but it is seed{seed}'s summary")
    for key, value in summary.items():
        if value is None:
            continue
        if key in RANGES or key.startswith(("test_acc_", "test_loss_")):
            low, high = RANGES.get(key) or (ACCURACY if "_acc_" in key else NON_NEGATIVE)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ValueError(f"{key}={value!r} is not a number")
            loss = "_loss" in key
            overflow = loss and value == math.inf
            undefined = loss and value != value and status == "diverged"
            if not ((math.isfinite(value) and low <= value <= high) or overflow or undefined):
                raise ValueError(f"{key}={value!r} is outside [{low}, {high}]")
        elif key in COUNTS and (type(value) is not int or value < 0):
            raise ValueError(f"{key}={value!r} is not a whole number >= 0")
        elif key in TEXTS and not isinstance(value, str):
            raise ValueError(f"{key}={value!r} is not text")
        elif key == "git_dirty" and not isinstance(value, bool):
            raise ValueError(f"git_dirty={value!r} is not true or false")


def missing_members(root: Path, present: set[str]) -> list[dict]:
    """Rows (status 'missing') for the members of jobs the sweeper planned (jobs.json) whose
    run folder does not exist yet: not started, or killed before writing anything."""
    jobs_file = root / JOBS_FILE
    if not jobs_file.exists():
        return []
    try:
        jobs = _read_dict(jobs_file, lambda p: json.loads(read_text(p)))["jobs"]
        planned = [(str(job["dir"]), int(seed)) for job in jobs for seed in job["seeds"]]
    except KeyError as e:
        return [_corrupt(JOBS_FILE, None, jobs_file, f"malformed (no key {e})")]
    except (ValueError, TypeError) as e:
        return [_corrupt(JOBS_FILE, None, jobs_file, f"malformed ({e})")]
    return [
        {"run": run, "seed": seed, "status": "missing"}
        for run, seed in planned
        if run not in present
    ]


def find_runs(sweep_dir: str | Path) -> list[Path]:
    """Run folders (those holding a bnlab config.yaml) under sweep_dir, sorted; not Hydra's
    records, nor members set aside when a folder was retrained with another config."""
    root = Path(sweep_dir)
    runs = [  # only the parts below the root: the root itself may be under a replaced-*
        p.parent
        for p in root.rglob("config.yaml")
        if not any(
            part == ".hydra" or part.startswith("replaced-") for part in p.relative_to(root).parts
        )
    ]
    return sorted(runs)


def _run_rows(root: Path, run_dir: Path) -> tuple[list[dict], list[pd.DataFrame]]:
    """The rows and histories of one run folder's members; an unreadable file makes its
    member (or the whole run, for config.yaml) a 'corrupt' row naming the file."""
    name = run_dir.relative_to(root).as_posix()
    try:
        config = _read_dict(run_dir / "config.yaml", lambda p: yaml.safe_load(read_text(p)))
    except ValueError as e:
        return [_corrupt(name, None, run_dir / "config.yaml", e)], []
    fields = flatten({k: v for k, v in config.items() if k != "seeds"})
    # a null read back from parquet looks like a setting the config lacks: name the nulls
    if nulls := ",".join(k for k, v in fields.items() if v is None):
        fields["null_settings"] = nulls
    seeds = config.get("seeds")
    if not (isinstance(seeds, list) and all(isinstance(s, int) for s in seeds)):
        failure = run_dir / "failure.json"  # a config too broken to name its members
        if not failure.exists():
            reason = f"seeds={seeds!r} is not a list of integers"
            return [{**fields, **_corrupt(name, None, run_dir / "config.yaml", reason)}], []
        try:
            summary = _read_dict(failure, lambda p: json.loads(read_text(p)))
        except ValueError as e:
            return [{**fields, **_corrupt(name, None, failure, e)}], []
        row = {"run": name, "seed": None, **fields, "status": "failed"}
        return [{**row, **{c: summary.get(c) for c in SUMMARY_COLUMNS[1:]}}], []
    rows, histories = [], []
    for seed in seeds:
        folder = member_dir(run_dir, seed)
        try:
            summary = (
                _read_dict(folder / "summary.json", lambda p: json.loads(read_text(p)))
                if (folder / "summary.json").exists()
                else {"status": "unfinished"}
            )
            _check_summary(summary, seed)
        except ValueError as e:
            rows.append({**fields, **_corrupt(name, seed, folder / "summary.json", e)})
            continue
        try:
            if summary["status"] in DONE_STATUSES and not (folder / "history.csv").exists():
                raise ValueError("missing, though the member's summary says it is done")
            hist = read_history(run_dir, seed)
        except (OSError, ValueError) as e:
            rows.append({**fields, **_corrupt(name, seed, folder / "history.csv", e)})
            continue
        try:  # the fingerprints: trained with this config, history complete, numbers its own
            if summary["status"] in DONE_STATUSES:
                check_member(run_dir, seed, summary, config, hist)
        except (OSError, ValueError) as e:
            path, _, reason = str(e).partition(": ")
            rows.append({**fields, **_corrupt(name, seed, Path(path), reason)})
            continue
        rows.append(
            {
                "run": name,
                "seed": seed,
                **fields,
                **{c: summary.get(c) for c in SUMMARY_COLUMNS},
                **{k: v for k, v in summary.items() if k.startswith(EVAL_MODE_KEYS)},
            }
        )
        if len(hist):
            histories.append(hist.assign(run=name, seed=seed))
    return rows, histories


def collect(sweep_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The (runs, history) tables of a sweep folder, without writing anything. A member whose
    files cannot be read is a row with status 'corrupt' and the file and reason in 'error';
    everything else is collected."""
    root = Path(sweep_dir)
    rows, histories = [], []
    for run_dir in find_runs(root):
        r, h = _run_rows(root, run_dir)
        rows += r
        histories += h
    rows += missing_members(root, {r["run"] for r in rows})
    runs = pd.DataFrame(rows, columns=None if rows else ["run", "seed"])
    for col in SUMMARY_COLUMNS:
        if col not in runs:
            runs[col] = None
    runs[FLOAT_COLUMNS] = runs[FLOAT_COLUMNS].astype("float64")
    runs["steps_done"] = runs["steps_done"].astype("Int64")
    for col in ("error", "code_sha256", "git_commit", "torch_version", "cpu_kernels", "host"):
        runs[col] = runs[col].astype("string")
    runs["git_dirty"] = runs["git_dirty"].astype("boolean")
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


COLLECT_KEY = b"bnlab.runs.collect"  # parquet metadata: the same token in both tables of a collect


def write_tables(root: Path, runs: pd.DataFrame, history: pd.DataFrame) -> None:
    """Write runs.parquet and history.parquet, each atomically, tagged with one token: a kill
    between the two renames leaves a pair whose tokens differ, which read_tables refuses."""
    token = uuid.uuid4().hex.encode()
    with (
        atomic_path(root / "history.parquet") as h_tmp,
        atomic_path(root / "runs.parquet") as r_tmp,
    ):
        for df, tmp in ((history, h_tmp), (runs, r_tmp)):
            table = pa.Table.from_pandas(df, preserve_index=False)
            meta = {**(table.schema.metadata or {}), COLLECT_KEY: token}
            pq.write_table(table.replace_schema_metadata(meta), tmp)


def read_tables(sweep_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, history) as the last complete `bnlab collect` wrote them; FileNotFoundError
    saying what to run when they are missing or are not from the same collect."""
    root = Path(sweep_dir)
    paths = [root / "runs.parquet", root / "history.parquet"]
    if not all(p.exists() for p in paths):
        raise FileNotFoundError(f"{root} is not collected yet: run `bnlab collect {root}`")
    tokens = {(pq.read_schema(p).metadata or {}).get(COLLECT_KEY) for p in paths}
    if len(tokens) != 1 or None in tokens:
        raise FileNotFoundError(
            f"runs.parquet and history.parquet in {root} are not from the same collect (one "
            f"was interrupted, or they predate this check): run `bnlab collect {root}` again"
        )
    return pd.read_parquet(paths[0]), pd.read_parquet(paths[1])


def counts_line(runs: pd.DataFrame) -> str:
    """'done D/N members (finished F, diverged V, ...)' over every status that occurs."""
    counts = status_counts(runs)
    done = counts.get("finished", 0) + counts.get("diverged", 0)
    detail = ", ".join(f"{s} {counts[s]}" for s in STATUSES if counts.get(s))
    return f"{done}/{len(runs)} members done ({detail or 'none planned'})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bnlab collect",
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
    try:
        write_tables(root, runs, history)
    except OSError as e:
        print(f"error: cannot write the tables into {root}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(
        f"{root}: {counts_line(runs)}; "
        f"wrote runs.parquet ({len(runs)} rows), history.parquet ({len(history)} rows)"
    )
    for row in runs[runs["status"] == "corrupt"].itertuples():
        print(f"  corrupt: {row.error}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
