"""Export a sweep's runs to TensorBoard or MLflow: `bnlab export --to tensorboard|mlflow SWEEP_DIR`.

Reads the sweep as `bnlab.runs.collect` does (nothing in the sweep is changed) and writes only its
finished and diverged members (others are skipped and counted). TensorBoard: one event folder
per member, OUT/<run>/seed<S>/ (OUT defaults to SWEEP_DIR/export/tensorboard), scalars tagged
split/metric or split/metric/layer at their steps, plus the member's config and seed as
hparams with its final test accuracy as the metric hparam/test_acc; open it with
`tensorboard --logdir OUT`. MLflow: a SQLite store OUT/mlflow.db (OUT defaults to
SWEEP_DIR/export/mlflow) holding one experiment named after the sweep folder, with one parent
run per configuration (named after its run folder, the flattened config as params) and one
nested child run per seed (param seed, tag status, metrics split.metric or
split.metric.layer by step); open it with `mlflow ui --backend-store-uri sqlite:///OUT/mlflow.db`
(OUT as an absolute path). An export is never overwritten or added to: a tensorboard OUT must
be empty or absent, and an mlflow store must not already hold an experiment of that name
(other sweeps may share one store); delete OUT or choose another --out to export again. Needs
the optional libraries: pip install 'bnlab[track]'.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import yaml

from .collect import collect
from .records import DONE_STATUSES, flatten, read_config, read_summary

BACKENDS = ("tensorboard", "mlflow")
INSTALL_HINT = "pip install 'bnlab[track]'"
HPARAM_METRIC = "hparam/test_acc"  # TensorBoard scalar holding the final test accuracy
MLFLOW_PARAMS_PER_BATCH = 100  # MLflow's log_batch limits
MLFLOW_METRICS_PER_BATCH = 1000
_MLFLOW_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-. :/]")  # MLflow allows only these in keys


class ExportError(Exception):
    """Bad input or a missing library: reported as one line, exit code 2."""


def config_params(root: Path, run: str) -> dict:
    """A configuration's flattened config (the runs table's config columns, as saved, so that
    ints stay ints where pandas would turn a column with missing values into floats)."""
    config = read_config(root / run)
    return flatten({k: v for k, v in config.items() if k != "seeds"})


def tag(split: str, metric: str, layer: str, sep: str) -> str:
    """split/metric[/layer] (TensorBoard, sep '/') or split.metric[.layer] (MLflow, sep '.')."""
    return sep.join(p for p in (split, metric, layer) if p)


def _rows(history: pd.DataFrame):
    """(step, split, metric, layer, value) tuples of a member's history, as Python values."""
    columns = ["step", "split", "metric", "layer", "value"]
    return zip(*(history[c].tolist() for c in columns))


def _member_history(history: pd.DataFrame) -> dict:
    """{(run, seed): its history rows, in step order} (TensorBoard drops earlier-step events)."""
    return {
        (run, int(seed)): g.sort_values("step", kind="stable")
        for (run, seed), g in history.groupby(["run", "seed"], sort=False)
    }


def _empty_history() -> pd.DataFrame:
    return pd.DataFrame({"step": [], "split": [], "metric": [], "layer": [], "value": []})


def _hparam(value):
    """A config value as TensorBoard accepts it (int, float, str, bool; None as 'None')."""
    return value if isinstance(value, bool | int | float | str) else str(value)


def import_tensorboard():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ExportError(f"tensorboard is not installed: {INSTALL_HINT}") from None
    return SummaryWriter


def import_mlflow():
    try:
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
    except ImportError:
        raise ExportError(f"mlflow is not installed: {INSTALL_HINT}") from None
    return MlflowClient, Metric, Param, MLFLOW_PARENT_RUN_ID


def export_tensorboard(root: Path, members: pd.DataFrame, history: pd.DataFrame, out: Path):
    """One event folder per member: OUT/<run>/seed<S>/."""
    SummaryWriter = import_tensorboard()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} is not empty (an earlier export?); delete it or pass --out DIR")
    hist = _member_history(history)
    params = {run: config_params(root, run) for run in members["run"].unique()}
    for row in members.itertuples(index=False):
        run, seed = row.run, int(row.seed)
        g = hist.get((run, seed), _empty_history())
        with SummaryWriter(log_dir=str(out / run / f"seed{seed}")) as w:
            for step, split, metric, layer, value in _rows(g):
                w.add_scalar(tag(split, metric, layer, "/"), value, int(step))
            hp = {k: _hparam(v) for k, v in params[run].items()}
            hp["seed"] = seed
            acc = float(row.test_acc) if pd.notna(row.test_acc) else math.nan
            last = int(g["step"].max()) if len(g) else 0
            # run_name "." writes the hparams into this member's folder (a second event file
            # there) instead of a new timestamp-named subfolder, which TensorBoard would show
            # as an extra run
            w.add_hparams(hp, {HPARAM_METRIC: acc}, run_name=".", global_step=last)
    return f"tensorboard --logdir {out}"


def _ms(iso: str | None) -> int | None:
    try:
        return int(datetime.fromisoformat(iso).timestamp() * 1000) if iso else None
    except (TypeError, ValueError):
        return None


def _mlflow_key(key: str) -> str:
    return _MLFLOW_BAD_KEY.sub("_", key)


def export_mlflow(root: Path, members: pd.DataFrame, history: pd.DataFrame, out: Path, name: str):
    """A SQLite store OUT/mlflow.db: experiment `name`, a parent run per configuration and a
    nested child run per seed."""
    MlflowClient, Metric, Param, PARENT = import_mlflow()
    out.mkdir(parents=True, exist_ok=True)
    db = (out / "mlflow.db").resolve()
    uri = f"sqlite:///{db}"
    for logger in ("mlflow.store.db.utils", "alembic"):  # "Creating initial database tables"
        logging.getLogger(logger).setLevel(logging.WARNING)
    client = MlflowClient(tracking_uri=uri)
    if client.get_experiment_by_name(name) is not None:
        raise ExportError(
            f"{db} already holds an experiment '{name}' (an earlier export?); "
            "delete it or pass --out DIR"
        )
    artifacts = (out / "artifacts").resolve().as_uri()  # else ./mlruns in the working folder
    exp_id = client.create_experiment(name, artifact_location=artifacts)
    hist = _member_history(history)
    now = int(time.time() * 1000)

    def log(run_id: str, params: list | None = None, metrics: list | None = None) -> None:
        params, metrics = params or [], metrics or []
        for i in range(0, len(params), MLFLOW_PARAMS_PER_BATCH):
            client.log_batch(run_id, params=params[i : i + MLFLOW_PARAMS_PER_BATCH])
        for i in range(0, len(metrics), MLFLOW_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=metrics[i : i + MLFLOW_METRICS_PER_BATCH])

    for run, group in members.groupby("run", sort=False):
        times = {}  # seed -> (start, end) in ms, from the summary (bnlab keeps no per-step time)
        for seed in group["seed"]:
            summary = read_summary(root / run, int(seed)) or {}
            end = _ms(summary.get("finished_at")) or now
            wall = summary.get("wall_s")
            start = end - int(wall * 1000) if isinstance(wall, int | float) else end
            times[int(seed)] = (start, end)
        parent = client.create_run(
            exp_id,
            start_time=min(s for s, _ in times.values()),
            run_name=run if run != "." else root.resolve().name,  # "." when given a run folder
        ).info.run_id
        params = config_params(root, run)
        log(parent, params=[Param(_mlflow_key(k), str(v)) for k, v in params.items()])
        for row in group.itertuples(index=False):
            seed = int(row.seed)
            start, end = times[seed]
            child = client.create_run(
                exp_id,
                start_time=start,
                tags={PARENT: parent, "status": str(row.status)},
                run_name=f"seed{seed}",
            ).info.run_id
            g = hist.get((run, seed), _empty_history())
            metrics = [
                Metric(_mlflow_key(tag(split, metric, layer, ".")), float(value), end, int(step))
                for step, split, metric, layer, value in _rows(g)
            ]
            log(child, params=[Param("seed", str(seed))], metrics=metrics)
            client.set_terminated(child, "FINISHED", end_time=end)
        client.set_terminated(parent, "FINISHED", end_time=max(e for _, e in times.values()))
    return f"mlflow ui --backend-store-uri {uri}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bnlab export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--to", required=True, choices=BACKENDS, help="the format to write")
    p.add_argument("sweep_dir", help="a sweep folder (hydra.sweep.dir) or a single run folder")
    p.add_argument(
        "--out",
        type=Path,
        help="where to write (default SWEEP_DIR/export/tensorboard or SWEEP_DIR/export/mlflow); "
        "an earlier export there is refused, never replaced or added to: delete it or pass "
        "another --out",
    )
    args = p.parse_args(argv)
    root = Path(args.sweep_dir)
    out = args.out or root / "export" / args.to

    def error(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    if not root.is_dir():
        return error(f"{root} is not a folder")
    try:
        (import_tensorboard if args.to == "tensorboard" else import_mlflow)()
        try:
            runs, history = collect(root)
        except (OSError, ValueError, yaml.YAMLError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ExportError(f"cannot read the runs under {root}: {first}") from None
        if runs.empty:
            raise ExportError(f"no bnlab runs (folders with config.yaml) under {root}")
        done = runs["status"].isin(DONE_STATUSES)
        members = runs[done]
        if (~done).any():
            counts = runs.loc[~done, "status"].value_counts().to_dict()
            detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            print(f"skipped {int((~done).sum())} members not finished or diverged ({detail})")
        if members.empty:
            raise ExportError(f"none of the {len(runs)} members under {root} is done")
        if args.to == "tensorboard":
            how = export_tensorboard(root, members, history, out)
        else:
            how = export_mlflow(root, members, history, out, root.resolve().name)
    except ExportError as e:
        return error(str(e))
    print(
        f"{root}: exported {len(members)} members of {members['run'].nunique()} "
        f"configurations to {out}; open with: {how}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
