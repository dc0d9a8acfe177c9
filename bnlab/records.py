"""What a run writes: per-member history (appended CSV) and summary (atomic JSON).

Layout of a run folder:
    config.yaml               the resolved, validated config (seeds: every member ever run here)
    .lock                     held (flock) by the process training in the folder
    seed{S}/history.csv       long format: step, split, metric, layer, value (appended)
    seed{S}/summary.json      written last and atomically; its presence means "done"
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

HISTORY_COLUMNS = ["step", "split", "metric", "layer", "value"]
DONE_STATUSES = ("finished", "diverged")
# metric {prefix}_hist_BB counts singular values s with log10(s) in [JAC_BINS[BB], JAC_BINS[BB+1])
JAC_BINS = tuple(-4.0 + 0.25 * i for i in range(25))
JOBS_FILE = "jobs.json"  # a sweep's full job list, written by the sweeper before any job starts


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


def member_dir(run_dir: str | Path, seed: int) -> Path:
    """A member's folder in a run folder: RUN/seed{S} (history.csv, summary.json, model.pt)."""
    return Path(run_dir) / f"seed{seed}"


def write_atomic(path: str | Path, text: str) -> None:
    """Write text to path so that a reader sees the old file or the new one, never a part."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """A temporary path beside `path` to write to; renamed onto `path` when the block ends
    without an exception, removed otherwise (a kill leaves at most a hidden .tmp file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")  # suffix kept: writers
    try:  # that pick the format from it (savefig, Pillow) still work
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def locked(run_dir: str | Path):
    """Hold RUN/.lock while training in a run folder: a second process on the same folder
    waits here until the first is done (then finds its members finished and skips them)."""
    path = Path(run_dir) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            print(f"{run_dir}: {holder} is training here; waiting for it", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_json(path: str | Path, obj: dict) -> None:
    """Write obj as indented, key-sorted JSON, atomically."""
    write_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def write_config(run_dir: str | Path, config: dict) -> None:
    """Write a run's resolved config (plain nested dicts) to RUN/config.yaml, atomically."""
    write_atomic(Path(run_dir) / "config.yaml", yaml.safe_dump(config, sort_keys=False))


MANIFEST = "manifest.json"  # beside written tables: each file's SHA-256, to verify on read


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def update_manifest(folder: str | Path, names: list[str]) -> None:
    """Record the SHA-256 of these files of `folder` in its manifest.json (others kept)."""
    folder = Path(folder)
    path = folder / MANIFEST
    entries = json.loads(path.read_text()) if path.exists() else {}
    entries.update({name: _sha256(folder / name) for name in names})
    write_json(path, entries)


def manifest(folder: str | Path) -> dict:
    """{file name: SHA-256} of the files written into `folder`; ValueError if unreadable."""
    path = Path(folder) / MANIFEST
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is unreadable ({e})") from None
    if not isinstance(entries, dict):
        raise ValueError(f"{path} holds no file list")
    return entries


def verify(path: str | Path) -> None:
    """ValueError unless `path` is listed in the manifest beside it with its current content
    (a table cut short, edited or not written by bnlab fails)."""
    path = Path(path)
    expected = manifest(path.parent).get(path.name)
    if expected is None:
        raise ValueError(f"not listed in {path.parent / MANIFEST}")
    if _sha256(path) != expected:
        raise ValueError("not the file that was written (cut short or edited)")


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
        # a new file, never an old one truncated in place: a writer still holding the old
        # file (a process that lost its lock) writes into the unlinked copy, not this one
        self.path.unlink(missing_ok=True)
        self.file = open(self.path, "x", newline="")  # noqa: SIM115 (open for the whole run)
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
    text = path.read_text(errors="replace") if path.exists() else ""
    if "\0" in text:
        raise ValueError("NUL bytes in the file (two writers?)")
    text = text[: text.rfind("\n") + 1]
    if text.count("\n") < 2:
        return pd.DataFrame(
            {
                c: pd.Series(dtype=t)
                for c, t in zip(HISTORY_COLUMNS, ["int64", "str", "str", "str", "float64"])
            }
        )
    try:
        df = pd.read_csv(
            io.StringIO(text),
            dtype={"split": str, "metric": str, "layer": str},
            keep_default_na=False,
            na_values={"value": ["nan", "NaN"]},
        )
        if list(df.columns) != HISTORY_COLUMNS:
            raise ValueError(f"columns {list(df.columns)}, expected {HISTORY_COLUMNS}")
        return df.astype({"step": "int64", "value": "float64"})
    except (ValueError, pd.errors.ParserError) as e:  # garbage rows: the caller names the file
        raise ValueError(f"bad rows ({' '.join(str(e).split())[:200]})") from None


SOURCE_PATHS = ("bnlab", "hydra_plugins")  # what a run's results depend on (configs included)


def provenance() -> dict:
    """Where a run's code came from: the git commit of the bnlab checkout and whether its
    source paths had uncommitted changes (both None for an installed package, outside a
    checkout), the torch version and the host."""
    import torch

    here = Path(__file__).resolve().parent

    def git(*args):
        out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""

    commit, dirty = None, None
    try:  # only when this bnlab is the checkout's own bnlab/ (not a package installed in it)
        top = git("rev-parse", "--show-toplevel")
        if top and Path(top).resolve() / "bnlab" == here:
            commit = git("rev-parse", "HEAD") or None
            status = git("status", "--porcelain", "--untracked-files=no", "--", *SOURCE_PATHS)
            dirty = bool(status) if commit else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "torch_version": torch.__version__,
        "host": socket.gethostname(),
    }
