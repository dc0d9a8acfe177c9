"""The `bnlab` command: `bnlab train [overrides]` and the commands that work on its results.

`python -m bnlab ARGS` is the same command; arguments that do not start with a command name
go to `train` (so `python -m bnlab model.norm=batch` trains, as it always did).
Hydra lives here (and in bnlab.compose): compose, validate into a RunConfig, call train.run.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .compose import CONFIG_MODULE, check_keys, compose_dict, unwritable
from .config import ConfigError, load_config
from .data import DataError
from .records import write_config
from .train import ResumeError, run, write_failure

log = logging.getLogger("bnlab")
PARENT_ENV = "BNLAB_SWEEP_PID"  # set by the sweeper; its joblib workers watch that process

# a full disk, a quota, a read-only or forbidden folder: the user's to fix, in one line
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)

# command -> (module with main(argv) -> int, one line of help)
COMMANDS = {
    "train": ("bnlab.cli", "train one configuration as a seed ensemble; -m for a sweep"),
    "collect": ("bnlab.collect", "turn a sweep folder into runs.parquet and history.parquet"),
    "status": ("bnlab.status", "where a sweep stands: members done, running, failed, missing"),
    "summary": ("bnlab.summary", "mean, std, min, max over seeds per configuration"),
    "figures": ("bnlab.figures", "draw the papers' figures from collected sweeps"),
    "tables": ("bnlab.tables", "the compact per-member tables that the claims report reads"),
    "claims": ("bnlab.claims", "write results/CLAIMS.md from the tables"),
    "reproduce": ("bnlab.reproduce", "every experiment, table, figure and the claims report"),
    "export": ("bnlab.export", "export a sweep to TensorBoard or MLflow"),
    "data": ("bnlab.data", "fetch or check MNIST"),
    "bench": ("bnlab.bench", "throughput of the training step against a naive PyTorch loop"),
}
USAGE = "usage: bnlab COMMAND [ARGS]   (bnlab COMMAND --help explains each)\n\ncommands:\n" + (
    "\n".join(f"  {name:10s} {text}" for name, (_, text) in COMMANDS.items())
)


@hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name="config", version_base="1.3")
def _train(cfg: DictConfig) -> float | None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun and "joblib" in str(HydraConfig.get().launcher.get("_target_", "")):
        _die_with_parent()
    fresh = {p.name for p in out_dir.iterdir()} <= {"bnlab.log"}  # Hydra made it just now
    try:
        summaries = run(load_config(cfg), out_dir)
    except Exception as e:
        disk = isinstance(e, OSError) and e.errno in DISK_ERRORS
        user = isinstance(e, (ConfigError, DataError)) or disk
        if disk:
            e = OSError(
                f"cannot write {e.filename or out_dir}: {e.strerror}; free some space or "
                "choose another results folder (BNLAB_RESULTS=DIR or hydra.run.dir=DIR)"
            )
        if user and not multirun:
            if fresh:  # bad input leaves no run folder behind
                shutil.rmtree(out_dir, ignore_errors=True)
            print(f"error: {e}", file=sys.stderr)  # the message, not a traceback
            raise SystemExit(2) from None
        if not disk and not isinstance(e, ResumeError):
            _record_failure(cfg, out_dir, e)
        raise
    done = [s["test_acc"] for s in summaries if "test_acc" in s]
    log.info(  # to the terminal and the run's bnlab.log
        f"{out_dir}: "
        + ", ".join(
            f"seed {s['seed']} {s['status']} test_acc {s.get('test_acc', float('nan')):.4f}"
            for s in summaries
        )
    )
    return sum(done) / len(done) if done else None


def _record_failure(cfg: DictConfig, out_dir: Path, error: Exception) -> None:
    """Leave a record the collector can read: the config as composed, failed summaries (on
    a full disk there is nothing to be done)."""
    try:
        if not (out_dir / "config.yaml").exists():
            write_config(out_dir, OmegaConf.to_container(cfg, resolve=True))
        seeds = OmegaConf.to_container(cfg).get("seeds")
        valid = isinstance(seeds, list) and all(isinstance(s, int) for s in seeds)
        write_failure(out_dir, seeds if valid else None, error)
    except OSError:
        pass


def _die_with_parent() -> None:
    """In a joblib worker: exit when the sweep's parent process is gone (a SIGKILLed parent
    would otherwise leave its workers training and writing into the sweep folder), also when
    it died before this job started. One watcher per worker process."""
    parent = int(os.environ.get(PARENT_ENV, os.getppid()))
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)
    if any(t.name == "bnlab-parent-watch" for t in threading.enumerate()):
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="bnlab-parent-watch").start()


def _completion_line() -> None:
    """Hydra's bash completion asks `bnlab -sc query=bash` with the whole line in COMP_LINE;
    drop the `train` word so Hydra sees only overrides."""
    line = os.environ.get("COMP_LINE", "")
    words = line.split(" ")
    if len(words) > 1 and words[1] == "train":
        os.environ["COMP_LINE"] = " ".join([words[0], *words[2:]])
        point = int(os.environ.get("COMP_POINT", len(line)))
        os.environ["COMP_POINT"] = str(max(0, point - len(" train")))


def train(argv: list[str]) -> int:
    """`bnlab train [-m] [overrides]`: check the overrides, then hand over to Hydra."""
    from hydra.core.plugins import Plugins

    # An editable install hides the hydra_plugins namespace from Hydra's scan: register ours
    # after the scan (which re-imports Hydra's own plugin modules, BasicSweeper among them).
    plugins = Plugins.instance()
    from hydra_plugins.bnlab_sweeper.bnlab_sweeper import BnlabSweeper

    plugins.register(BnlabSweeper)
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    flags = {"-m", "--multirun", "-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info"}
    if any(a in ("-sc", "--shell-completion") or a.startswith("--shell-completion=") for a in argv):
        _completion_line()
    elif not any(a in flags or a.startswith(("--cfg", "--info", "-p", "--package")) for a in argv):
        # a single run: validate before Hydra creates a run folder, so bad input leaves none
        try:
            cfg = compose_dict([a for a in argv if not a.startswith("-")], hydra=True)
            load_config({k: v for k, v in cfg.items() if k != "hydra"})
            problem = unwritable(str(cfg.hydra.run.dir))
            if problem:
                raise ConfigError(
                    f"cannot write the run folder {cfg.hydra.run.dir}: {problem}; choose "
                    "another with BNLAB_RESULTS=DIR or hydra.run.dir=DIR"
                )
        except (ConfigError, DataError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        try:
            check_keys([a for a in argv if not a.startswith("-")])
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    sys.argv = ["bnlab", *argv]
    _train()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] == "train":
        return train(argv[1:])
    if argv[0] in COMMANDS:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `bnlab status DIR | head` ends quietly
        module = importlib.import_module(COMMANDS[argv[0]][0])
        return module.main(argv[1:]) or 0
    if "=" in argv[0] or argv[0].startswith("-"):
        return train(argv)  # `python -m bnlab model.norm=batch`: overrides go to train
    print(f"error: unknown command '{argv[0]}'\n\n{USAGE}", file=sys.stderr)
    return 2
