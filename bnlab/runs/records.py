"""What a run writes: per-member history (appended CSV) and summary (atomic JSON).

Layout of a run folder:
    config.yaml               the resolved, validated config (seeds: every member ever run here)
    code.json                 the version of bnlab's code the folder was started with
    .lock                     held (flock) by the process training in the folder
    seed{S}/history.csv       long format: step, split, metric, layer, value (appended)
    seed{S}/summary.json      written last and atomically; its presence means "done". It holds
                              the member's fingerprints: its identity config's SHA-256 and its
                              history's row count and SHA-256 (check_member compares them)
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import functools
import hashlib
import io
import json
import logging
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

HISTORY_COLUMNS = ["step", "split", "metric", "layer", "value"]
DONE_STATUSES = ("finished", "diverged")
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


MAX_FILE_BYTES = 64 * 2**20  # config.yaml, summary.json, jobs.json: a few KB when bnlab wrote them
MAX_HISTORY_BYTES = 4 * 2**30  # the densest committed history is about 100 MB


def read_bytes(path: str | Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The content of a regular file of at most `limit` bytes. ValueError for anything else
    (a FIFO, which would block a reader, or a link to a device such as /dev/zero, which never
    ends); FileNotFoundError when it is absent."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once; checked next
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file (a pipe, a device or a folder)")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit // 2**20} MiB: not a file bnlab wrote")
    return data


def read_text(path: str | Path, limit: int = MAX_FILE_BYTES) -> str:
    """read_bytes as text (undecodable bytes replaced)."""
    return read_bytes(path, limit).decode(errors="replace")


def open_no_follow(path: str | Path, flags: int):
    """os.open(path, flags) that refuses a symbolic link at `path` (it would redirect bnlab's
    writes to another file, e.g. one that a planted RUN/.lock link points to)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise LinkError(path) from None
        raise


class LinkError(OSError):
    """A symbolic link where bnlab writes one of its own files."""

    def __init__(self, path):
        super().__init__(
            errno.ELOOP,
            f"{path} is a symbolic link; bnlab writes only its own files in a run folder, "
            "never through links: remove it",
        )
        self.filename = str(path)

    def __str__(self):
        return self.strerror


def write_atomic(path: str | Path, text: str) -> None:
    """Write text to path so that a reader sees the old file or the new one, never a part."""
    with (
        atomic_path(path) as tmp,
        os.fdopen(open_no_follow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "w") as f,
    ):
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
        tmp.unlink(missing_ok=True)  # a leftover, or a planted link: never written through
        yield tmp
        os.replace(tmp, path)
    except OSError as e:  # name the file the user asked for, not a nameless write or the tmp
        if e.filename in (None, str(tmp)):
            e.filename = str(path)
        raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def locked(run_dir: str | Path):
    """Hold RUN/.lock while training in a run folder: a second process on the same folder
    waits here until the first is done (then finds its members finished and skips them)."""
    path = Path(run_dir) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(open_no_follow(path, os.O_RDWR | os.O_CREAT), "r+") as f:
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
    """A run's saved config as nested dicts (bnlab.runs.config.load_config turns it back into a
    RunConfig, so the run can be repeated)."""
    return yaml.safe_load(read_text(Path(run_dir) / "config.yaml"))


def count_done(sweep_dir: str | Path, seeds: list[int] | None = None) -> int:
    """Members under sweep_dir whose summary says finished or diverged; with seeds, only
    those members of the run folder sweep_dir (not other seeds, not replaced-* copies)."""
    done = 0
    paths = Path(sweep_dir).rglob("summary.json")
    if seeds is not None:
        paths = [member_dir(sweep_dir, s) / "summary.json" for s in seeds]
    for path in paths:
        with contextlib.suppress(OSError, ValueError):  # being replaced: next look counts it
            summary = json.loads(read_text(path))
            done += isinstance(summary, dict) and summary.get("status") in DONE_STATUSES
    return done


def read_summary(run_dir: str | Path, seed: int) -> dict | None:
    """A member's summary.json as a dict, or None when it has none yet."""
    path = member_dir(run_dir, seed) / "summary.json"
    return json.loads(read_text(path)) if path.exists() else None


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
        """Flush and fsync: the history is on disk before the summary that fingerprints it."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


def expected_buffers(run_dir: Path) -> set | None:
    """{(name, shape)} of the running statistics a member of this run holds, from its
    config.yaml (None if unreadable)."""
    from ..engine.model import MLP
    from .config import load_config

    try:
        saved = read_config(run_dir)  # the data folder may be another machine's: not checked
        cfg = load_config({**saved, "data": {**saved.get("data", {}), "download": True}})
    except Exception:  # a bad config.yaml is collect's to report; judge by the members then
        return None
    state = MLP(cfg.model, members=2).state_dict()  # a member's: the tensors with its axis
    return {
        (k, tuple(v.shape[1:]))
        for k, v in state.items()
        if ".running_" in k and v.dim() and v.shape[0] == 2
    }


def read_history(run_dir: str | Path, seed: int) -> pd.DataFrame:
    """A member's history up to its last complete row (a killed writer may leave half a line)."""
    path = member_dir(run_dir, seed) / "history.csv"
    text = read_text(path, MAX_HISTORY_BYTES) if path.exists() else ""
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
# modules that only read, report or launch runs: editing them changes no result
# (file names, or folders such as analysis/, anywhere under bnlab/)
NOT_TRAINING = {"analysis", "bench", "cli", "collect", "export", "livelog", "reproduce",
                "status", "summary", "confirm", "__main__"}  # fmt: skip


@functools.cache
def code_version() -> str:
    """SHA-256 over the source of bnlab's training code (its modules but the reporting ones)
    and its configs (configs/ in a checkout, bnlab/conf/ in an installed package), as this
    process loaded them: two runs with the same value ran the same code, in a checkout or an
    installed package alike."""
    from importlib import resources

    here = Path(__file__).resolve().parents[1]  # bnlab/
    h = hashlib.sha256()
    for path in sorted(here.rglob("*")):
        rel = Path(path.relative_to(here).as_posix())
        if (
            path.suffix == ".py"
            and "__pycache__" not in rel.parts
            and rel.parts[0] != "conf"  # hashed below, wherever it lives
            and not {part.removesuffix(".py") for part in rel.parts} & NOT_TRAINING
        ):
            h.update(rel.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    conf = Path(str(resources.files("bnlab.conf")))
    for path in sorted(conf.rglob("*.yaml")):
        h.update(b"conf/" + path.relative_to(conf).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def provenance() -> dict:
    """Where a run's code came from: code_version(), the git commit of the bnlab checkout and
    whether its source paths had uncommitted changes (both None for an installed package,
    outside a checkout), the torch version, the vectorised CPU kernels ATen dispatched to
    (they round some reductions differently: bnlab/__init__.py pins AVX2 on x86) and the
    host."""
    import torch

    here = Path(__file__).resolve().parents[1]  # bnlab/

    def git(*args, cwd=here):
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""

    commit, dirty = None, None
    try:  # only when this bnlab is the checkout's own bnlab/ (not a package installed in it)
        top = git("rev-parse", "--show-toplevel")
        if top and Path(top).resolve() / "bnlab" == here:
            commit = git("rev-parse", "HEAD") or None
            # from the top: pathspecs are relative to git's working folder
            status = git("status", "--porcelain", "-uno", "--", *SOURCE_PATHS, cwd=top)
            dirty = bool(status) if commit else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "code_sha256": code_version(),
        "git_commit": commit,
        "git_dirty": dirty,
        "torch_version": torch.__version__,
        "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
        "host": socket.gethostname(),
    }


# ---- a member's fingerprints: what it was trained with, and its history as written


def identity(config: dict) -> dict:
    """The settings that decide what a run computes, flat ({'model.norm': 'batch', ...}):
    every setting but the seeds and config.NOT_IDENTITY, as written (no schema defaults
    filled in or left out, so the value does not depend on the code that reads it)."""
    from .config import NOT_IDENTITY

    skip = ("seeds", *NOT_IDENTITY)
    return {k: v for k, v in sorted(flatten(config).items()) if k not in skip}


def fingerprint(config: dict) -> str:
    """SHA-256 of identity(config): equal for two complete configs that compute the same."""
    return hashlib.sha256(json.dumps(identity(config), default=repr).encode()).hexdigest()


def history_digest(path: str | Path) -> tuple[int, str]:
    """(data rows, SHA-256) of a history.csv."""
    data = read_bytes(path, MAX_HISTORY_BYTES)
    return max(data.count(b"\n") - 1, 0), hashlib.sha256(data).hexdigest()


def fingerprints(config: dict, history: str | Path) -> dict:
    """The keys a member's summary carries so that check_member can tell it was trained with
    `config` and that its history is complete and unedited."""
    rows, sha = history_digest(history)
    return {"config_sha256": fingerprint(config), "history_rows": rows, "history_sha256": sha}


FINAL_KEYS = ("test_acc", "test_loss", "train_acc", "train_loss")  # also in the history


def check_member(run_dir: str | Path, seed: int, summary: dict, config: dict, history=None):
    """ValueError('<file>: why') unless a done member's summary matches `config` (its run's,
    or the one a resume would train with), its history.csv (row count and checksum) and the
    history's final numbers (a DataFrame from read_history, when given). Members of folders
    started before bnlab recorded fingerprints (no code.json) may carry none."""
    folder = member_dir(run_dir, seed)
    if "config_sha256" not in summary:
        if (Path(run_dir) / "code.json").exists():
            raise ValueError(
                f"{folder / 'summary.json'}: no fingerprint, though its folder was started by "
                "a bnlab that writes them (edited, or copied from an older run)"
            )
        return
    if summary["config_sha256"] != fingerprint(config):
        raise ValueError(
            f"{folder / 'summary.json'}: the member was trained with another config than "
            f"{Path(run_dir) / 'config.yaml'} holds (copied from another run, or a file edited)"
        )
    rows, sha = history_digest(folder / "history.csv")
    if (rows, sha) != (summary.get("history_rows"), summary.get("history_sha256")):
        raise ValueError(
            f"{folder / 'history.csv'}: {rows} rows, not the {summary.get('history_rows')} "
            "rows written in training, or their content changed (cut short or edited)"
        )
    if history is None:
        return
    final = history[history["layer"] == ""].groupby(["split", "metric"])["value"].last()
    for key, value in summary.items():
        if key in FINAL_KEYS or key.startswith(("test_acc_", "test_loss_")):
            split, metric = key.split("_", 1)
            last = final.get((split, metric))
            if last is not None and not (value == last or (value != value and last != last)):
                raise ValueError(
                    f"{folder / 'summary.json'}: {key}={value}, but its history ends at "
                    f"{last} (the summary was edited)"
                )


# ---- run folders hold only bnlab's own files where bnlab writes


def check_no_links(run_dir: str | Path, seeds) -> None:
    """LinkError if a file or folder bnlab writes in run_dir (its config, lock, log, failure
    record, code record, and each member's folder and files) is a symbolic link."""
    run_dir = Path(run_dir)
    names = ["config.yaml", "code.json", ".lock", "bnlab.log", "failure.json"]
    for seed in seeds:
        names += [f"seed{seed}"] + [
            f"seed{seed}/{n}" for n in ("history.csv", "summary.json", "model.pt")
        ]
    for name in names:
        if (run_dir / name).is_symlink():
            raise LinkError(run_dir / name)


class NoFollowFileHandler(logging.FileHandler):
    """Hydra's bnlab.log handler (conf/config.yaml), opened without following a symbolic
    link: a planted link gets no log lines; the log then goes to the terminal only."""

    def __init__(self, filename, mode="a", encoding=None, delay=True, errors=None):
        super().__init__(filename, mode, encoding, delay=True, errors=errors)  # opened in emit

    def _open(self):
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        return os.fdopen(open_no_follow(self.baseFilename, flags), "a", encoding=self.encoding)

    def emit(self, record):
        if self.stream is None:
            try:
                self.stream = self._open()
            except OSError as e:
                print(f"bnlab: not logging to {self.baseFilename}: {e}", file=sys.stderr)
                self.close()
                self.emit = lambda record: None  # said once
                return
        super().emit(record)
