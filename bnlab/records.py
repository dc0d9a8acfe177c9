"""What a run writes: per-member history (appended CSV) and summary (atomic JSON).

Layout of a run folder:
    config.yaml               the resolved, validated config
    seed{S}/history.csv       long format: step, split, metric, layer, value (appended)
    seed{S}/summary.json      written last and atomically; its presence means "done"
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import yaml

HISTORY_COLUMNS = ["step", "split", "metric", "layer", "value"]
DONE_STATUSES = ("finished", "diverged")
JOBS_FILE = "jobs.json"  # a sweep's full job list, written by the sweeper before any job starts


def member_dir(run_dir: str | Path, seed: int) -> Path:
    """A member's folder in a run folder: RUN/seed{S} (history.csv, summary.json, model.pt)."""
    return Path(run_dir) / f"seed{seed}"


def write_atomic(path: str | Path, text: str) -> None:
    """Write text to path so that a reader sees the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: str | Path, obj: dict) -> None:
    """Write obj as indented, key-sorted JSON, atomically."""
    write_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def write_config(run_dir: str | Path, config: dict) -> None:
    """Write a run's resolved config (plain nested dicts) to RUN/config.yaml, atomically."""
    write_atomic(Path(run_dir) / "config.yaml", yaml.safe_dump(config, sort_keys=False))


def read_config(run_dir: str | Path) -> dict:
    """A run's saved config as nested dicts (bnlab.config.load_config turns it back into a
    RunConfig, so the run can be repeated)."""
    return yaml.safe_load((Path(run_dir) / "config.yaml").read_text())


def count_done(sweep_dir: str | Path) -> int:
    """Members under sweep_dir whose summary says finished or diverged."""
    done = 0
    for path in Path(sweep_dir).rglob("summary.json"):
        with contextlib.suppress(OSError, ValueError):  # being replaced: next look counts it
            done += json.loads(path.read_text()).get("status") in DONE_STATUSES
    return done


def read_summary(run_dir: str | Path, seed: int) -> dict | None:
    """A member's summary.json as a dict, or None when it has none yet."""
    path = member_dir(run_dir, seed) / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


class History:
    """Appends long-format rows to one member's history.csv; rows reach disk at each flush."""

    def __init__(self, run_dir: str | Path, seed: int):
        self.path = member_dir(run_dir, seed) / "history.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "w", newline="")  # noqa: SIM115 (open for the whole run)
        self.writer = csv.writer(self.file)
        self.writer.writerow(HISTORY_COLUMNS)

    def add(self, step: int, split: str, metric: str, value: float, layer: str = "") -> None:
        self.writer.writerow((step, split, metric, layer, repr(float(value))))

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def read_history(run_dir: str | Path, seed: int) -> pd.DataFrame:
    """A member's history up to its last complete row (a killed writer may leave half a line)."""
    path = member_dir(run_dir, seed) / "history.csv"
    text = path.read_text() if path.exists() else ""
    text = text[: text.rfind("\n") + 1]
    if text.count("\n") < 2:
        return pd.DataFrame(
            {
                c: pd.Series(dtype=t)
                for c, t in zip(HISTORY_COLUMNS, ["int64", "str", "str", "str", "float64"])
            }
        )
    df = pd.read_csv(
        io.StringIO(text),
        dtype={"split": str, "metric": str, "layer": str},
        keep_default_na=False,
        na_values={"value": ["nan", "NaN"]},
    )
    return df.astype({"step": "int64", "value": "float64"})


def git_info() -> dict:
    """Commit and dirty flag of the bnlab source tree (None outside a git checkout)."""
    here = Path(__file__).resolve().parent

    def git(*args):
        out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""

    try:
        commit = git("rev-parse", "HEAD") or None
        dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"git_commit": commit, "git_dirty": dirty}
