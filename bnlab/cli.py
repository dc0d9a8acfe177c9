"""The `bnlab` command: `bnlab train [overrides]` and the commands that work on its results.

`python -m bnlab ARGS` is the same command; arguments that do not start with a command name
go to `train` (so `python -m bnlab model.norm=batch` trains, as it always did).
Hydra lives here (and in bnlab.compose): compose, validate into a RunConfig, call train.run.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import logging
import math
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

from .engine.data import DataError
from .runs.compose import (
    CONFIG_MODULE,
    PARENT_ENV,
    check_keys,
    compose_dict,
    search_path,
    unwritable,
    with_config_dirs,
)
from .runs.config import ConfigError, load_config
from .runs.records import count_done, write_config
from .runs.train import ResumeError, run, write_failure

log = logging.getLogger("bnlab")
# Hydra's options that take a value (the value is not an override)
VALUE_FLAGS = ("-cd", "--config-dir", "-cp", "--config-path", "-cn", "--config-name", "-p",
               "--package", "-sc", "--shell-completion", "-c", "--cfg")  # fmt: skip
RUNNING: dict = {}  # the single run in progress: its folder and its seeds

# a full disk, a quota, a read-only or forbidden folder: the user's to fix, in one line
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)

# command -> (module with main(argv) -> int, one line of help)
COMMANDS = {
    "train": ("bnlab.cli", "train one configuration as a seed ensemble; -m for a sweep"),
    "collect": ("bnlab.runs.collect", "turn a sweep folder into runs.parquet and history.parquet"),
    "status": ("bnlab.runs.status", "where a sweep stands: members done, running, failed, missing"),
    "summary": ("bnlab.runs.summary", "mean, std, min, max over seeds per configuration"),
    "figures": ("bnlab.analysis.figures", "draw the papers' figures from collected sweeps"),
    "tables": (
        "bnlab.analysis.tables",
        "the compact per-member tables that the claims report reads",
    ),
    "claims": ("bnlab.analysis.claims.cli", "write results/CLAIMS.md from the tables"),
    "reproduce": ("bnlab.reproduce", "every experiment, table, figure and the claims report"),
    "export": ("bnlab.runs.export", "export a sweep to TensorBoard or MLflow"),
    "data": ("bnlab.engine.data", "fetch or check MNIST"),
    "bench": ("bnlab.runs.bench", "throughput of the training step against a naive PyTorch loop"),
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
    seeds = OmegaConf.to_container(cfg.seeds) if OmegaConf.is_list(cfg.get("seeds")) else None
    RUNNING.update(dir=out_dir, seeds=seeds)
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
        if user or isinstance(e, ResumeError):  # the sweeper says it in one line per point
            raise ConfigError(str(e)) from None
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
    if os.getpid() == parent:  # joblib with one job at a time runs it in the sweep's process
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)
    # Ctrl-C reaches the whole process group; the sweep handles it (it stops its workers and
    # says how far it got), so a worker ignores it rather than print a traceback of its own
    with contextlib.suppress(ValueError):  # not the main thread: nothing to change
        signal.signal(signal.SIGINT, signal.SIG_IGN)
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


def complete(line: str) -> list[str] | None:
    """Bash completions of the last word of `line` (the command line up to the cursor), or
    None to leave it to Hydra (config keys): the commands, a command's options and
    subcommands, and for `KEY=` every value a fixed set allows (the schema's choices, the
    options of a config group, true/false)."""
    words = line.split(" ")
    word = words[-1]
    if len(words) == 2 and "=" not in word and "." not in word:
        return [*COMMANDS, "--help"]
    if len(words) > 2 and words[1] in COMMANDS and words[1] != "train":
        return _options(words[1:-1])
    key, eq, _ = word.partition("=")
    values = _values(key.lstrip("+"), search_path(words)) if eq else None
    return None if values is None else [f"{key}={v}" for v in values]


def _values(key: str, search: list[str]) -> list[str] | None:
    """The values a setting or config group allows, or None when they are not a fixed set."""
    from omegaconf.nodes import BooleanNode

    from .runs.compose import group_options, groups
    from .runs.config import RunConfig, choices

    if key in groups():
        return group_options(key, search)
    if key in choices():
        return choices()[key]
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.structured(RunConfig)
    node = OmegaConf.select(node, parent) if parent else node
    if isinstance(node, DictConfig) and isinstance(node._get_node(leaf), BooleanNode):
        return ["true", "false", *(["null"] if node._get_node(leaf)._is_optional() else [])]
    return None


def _options(words: list[str]) -> list[str]:
    """The options and subcommands of `bnlab COMMAND [SUBCOMMAND]`, from its own parser."""
    import argparse
    from unittest import mock

    parsers = []

    def capture(parser, *args, **kwargs):
        parsers.append(parser)
        raise SystemExit(0)

    patch = mock.patch.object(argparse.ArgumentParser, "parse_args", capture)
    with patch, contextlib.suppress(SystemExit):
        importlib.import_module(COMMANDS[words[0]][0]).main([])
    out = []
    for action in parsers[0]._actions if parsers else []:
        if isinstance(action, argparse._SubParsersAction):
            if len(words) > 1 and words[1] in action.choices:  # `bnlab data fetch --`
                return [o for a in action.choices[words[1]]._actions for o in a.option_strings]
            out += action.choices
        out += action.option_strings
    return out


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(overrides, --config-dir folders) of a `bnlab train` command line."""
    overrides, config_dirs, args = [], [], iter(argv)
    for arg in args:
        flag, eq, value = arg.partition("=")
        if flag in ("-cd", "--config-dir"):
            config_dirs.append(value if eq else next(args, ""))
        elif flag in VALUE_FLAGS and not eq:
            next(args, None)  # its value is no override
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides, config_dirs


def sweep_refusal(cfg: DictConfig, overrides: list[str], argv: list[str]) -> str | None:
    """Why a config that declares a sweep (an experiment's hydra.sweeper.params) must run with
    -m: the swept settings the command line does not fix, or None."""
    params = OmegaConf.to_container(cfg.hydra.sweeper.params) if cfg.hydra.sweeper.params else {}
    fixed = {o.partition("=")[0].lstrip("+~") for o in overrides}
    swept = {k: str(v).split(",") for k, v in params.items() if k not in fixed}
    swept = {k: v for k, v in swept.items() if len(v) > 1 or "(" in v[0]}
    if not swept:
        return None
    sizes = [len(v) for v in swept.values() if "(" not in v[0]]
    runs = f"{math.prod(sizes)} runs" if len(sizes) == len(swept) else "several runs"
    name = next((o for o in overrides if o.startswith("experiment=")), "this config")
    keys = " and ".join(swept)
    return (
        f"{name} is a sweep over {keys} ({runs}): add -m to train it, bnlab train -m "
        f"{' '.join(argv)} (or set {keys} to train one run)"
    )


def _interrupted() -> str:
    """What an interrupted command had finished: the sweep's members (the sweeper records the
    run folders it planned), else the single run's."""
    from hydra_plugins.bnlab_sweeper.bnlab_sweeper import BnlabSweeper

    if BnlabSweeper.planned:
        folders = BnlabSweeper.planned
        done, total = BnlabSweeper._done(folders), sum(len(s) for s in folders.values())
    elif not RUNNING.get("seeds"):
        return "interrupted before any member started; rerun the same command to start"
    else:
        done, total = count_done(RUNNING["dir"], RUNNING["seeds"]), len(RUNNING["seeds"])
    return f"interrupted: {done} of {total} members finished; rerun the same command to resume"


def _stop_workers() -> None:
    """Shut a parallel launcher's worker pool (joblib's loky executor) down: no worker keeps
    training. The workers' locks die with them; multiprocessing's resource tracker removes
    them and would warn about each ("leaked semaphore"): train() silences that warning."""
    loky = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(loky, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


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
        line = os.environ.get("COMP_LINE", "")
        line = line[: int(os.environ.get("COMP_POINT", len(line)))]
        if "query=bash" in argv and (words := complete(line)) is not None:
            print("\n".join(words))
            return 0
        _completion_line()
    elif not any(a in flags or a.startswith(("--cfg", "--info", "-p", "--package")) for a in argv):
        # a single run: validate before Hydra creates a run folder, so bad input leaves none
        overrides, config_dirs = split_args(argv)
        try:
            cfg = compose_dict(overrides, hydra=True, config_dirs=config_dirs)
            if problem := sweep_refusal(cfg, overrides, argv):
                raise ConfigError(problem)
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
        overrides, config_dirs = split_args(argv)
        try:
            check_keys(with_config_dirs(overrides, config_dirs))
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    sys.argv = ["bnlab", *argv]
    # inherited by the resource tracker that a parallel launcher starts (see _stop_workers)
    quiet, warnings = "ignore:resource_tracker:UserWarning", os.getenv("PYTHONWARNINGS", "")
    if quiet not in warnings:
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [warnings, quiet]))
    try:
        _train()
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the cleanup
        _stop_workers()
        print(_interrupted(), file=sys.stderr)
        return 130
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
        try:
            return module.main(argv[1:]) or 0
        except OSError as e:  # a full disk, a read-only folder: one line, not a traceback
            if e.errno not in DISK_ERRORS:
                raise
            space = e.errno in (errno.ENOSPC, errno.EDQUOT)
            fix = "free some space" if space else "make it writable"
            print(
                f"error: {e.filename or 'a file'}: {e.strerror}; {fix}, or give another "
                f"folder (bnlab {argv[0]} --help names the options)",
                file=sys.stderr,
            )
            return 1
    if "=" in argv[0] or argv[0].startswith("-"):
        return train(argv)  # `python -m bnlab model.norm=batch`: overrides go to train
    print(f"error: unknown command '{argv[0]}'\n\n{USAGE}", file=sys.stderr)
    return 2
