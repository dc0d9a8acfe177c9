"""bnlab's Hydra sweeper (`hydra/sweeper=bnlab`, the default in configs/config.yaml).

Hydra's basic sweeper, plus what a long sweep needs. (It lives in the hydra_plugins
namespace because Hydra loads plugins only from there; bnlab itself never imports Hydra.)

- Several experiments in one sweep: `bnlab train -m experiment=a,b` expands each
  experiment's own `hydra.sweeper.params` (command-line values of the same key win) and runs
  every point of every experiment in its experiment's sweep folder, as one pool of jobs: a
  parallel launcher keeps all its workers busy until the last job, instead of idling at the
  end of each experiment. Points of different experiments that land in the same run folder
  (experiments that reuse each other's runs) run once; if their configs differ, nothing starts.
- Every point is composed and validated before any job starts: one bad value fails the
  whole command at once, listing each bad point with the field and the allowed values (and a
  data folder that every point reads once, however many points read it).
- One configuration, one folder: a point whose config (seeds and the settings that change
  nothing aside) equals that of a run folder already in its sweep folder, or of an earlier
  point, runs in that folder whatever overrides spelled it (`train.threads=1` spelled out).
  A hydra.sweep.subdir that leaves the sweep folder is refused.
- Jobs start longest first (bnlab.runs.train.estimated_seconds), so a parallel launcher does not
  end on one long job while its other workers idle.
- While jobs run, the parent prints done/total members and an estimate of the time left,
  counting summaries in the run folders (so it works with any launcher: basic, joblib,
  submitit). Members already done by an earlier invocation are counted as skipped; only the
  members (seeds) the sweep asks for count. The planned run folders are in
  BnlabSweeper.planned, where bnlab.cli reads what an interrupted sweep had finished.
- A point that refuses to train (a resume refusal, bad data, a full disk) is one line naming
  the point and why; the other points still run, and the sweep exits 2.
- With the joblib launcher, a guard process kills the workers when this process dies without
  shutting them down (SIGKILL), idle workers included.

Importing this module imports nothing heavy (no torch, no bnlab): Hydra imports every plugin
module of the environment when any Hydra application starts; bnlab is imported when the
sweeper is used.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path

import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

log = logging.getLogger(__name__)


class BnlabSweeper(BasicSweeper):
    # {run folder: its seeds} of the sweep in progress, set once it is planned: bnlab.cli reads
    # it to say how many members an interrupted sweep had finished
    planned: dict[Path, list[int]] = {}

    def __init__(self, max_batch_size=None, params=None, progress_every: float = 10.0):
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.progress_every = progress_every

    def points(self, arguments: list[str]) -> list[list[str]]:
        """Every sweep point (its list of overrides), experiment by experiment when the
        command line sweeps `experiment`."""
        from bnlab.runs.compose import hydra_message

        try:
            return self._points(arguments)
        except HydraException as e:
            _refuse(f"cannot compose {' '.join(arguments)}: {hydra_message(e)}")

    def _points(self, arguments: list[str]) -> list[list[str]]:
        loader = self.hydra_context.config_loader
        parser = OverridesParser.create(config_loader=loader)
        parsed = parser.parse_overrides(arguments)
        swept = [o for o in parsed if o.get_key_element() == "experiment" and o.is_sweep_override()]
        if not swept:
            params = [f"{k}={v}" for k, v in self.params.items()]
            return self.split_arguments(parser.parse_overrides(params + arguments), None)[0]
        rest = [a for a, o in zip(arguments, parsed) if o.get_key_element() != "experiment"]
        points = []
        for name in swept[0].sweep_string_iterator():
            cfg = loader.load_sweep_config(self.config, [f"experiment={name}"])
            params = OmegaConf.to_container(cfg.hydra.sweeper.params) or {}
            own = [f"{k}={v}" for k, v in params.items()] + [f"experiment={name}"] + rest
            points += self.split_arguments(parser.parse_overrides(own), None)[0]
        return points

    def plan(self, points: list[list[str]]) -> list[dict]:
        """Compose and validate every point; one job per run folder, longest first. Writes each
        sweep folder's jobs.json (so status and collect can name members not started yet; jobs
        of other sweeps sharing the folder are kept)."""
        from bnlab.runs.compose import hydra_message, unwritable
        from bnlab.runs.config import ConfigError, load_config, to_dict
        from bnlab.runs.records import JOBS_FILE, fingerprint, write_json
        from bnlab.runs.train import estimated_seconds

        errors, jobs, data, folders = {}, {}, {}, {}  # errors: {message: [points]}
        for num, overrides in enumerate(points):
            try:
                cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
                rc = load_config({k: v for k, v in cfg.items() if k != "hydra"})
                with open_dict(cfg):  # as the launcher numbers the points (Hydra's default
                    cfg.hydra.job.num = num  # subdir is ${hydra.job.num})
                sweep, sub = str(cfg.hydra.sweep.dir), str(cfg.hydra.sweep.subdir)
            except (ConfigError, HydraException, OmegaConfBaseException) as e:
                message = str(e) if isinstance(e, ConfigError) else hydra_message(e)
                errors.setdefault(message, []).append(" ".join(overrides))
                continue
            if rc.data.name == "mnist":
                data.setdefault((rc.data.root, rc.data.download), []).append(overrides)
            problem = unwritable(sweep)
            if problem := (problem and f"cannot write {sweep}: {problem}") or _outside(sweep, sub):
                errors.setdefault(problem, []).append(" ".join(overrides))
                continue
            config = to_dict(rc)
            if sweep not in folders:
                folders[sweep] = _run_folders(Path(sweep))
            sub = _same_config_folder(Path(sweep), sub, folders[sweep], fingerprint(config))
            job = {"dir": sub, "seeds": list(rc.seeds), "overrides": list(overrides)}
            first, first_rc = jobs.setdefault((sweep, sub), (job, rc))
            if fingerprint(to_dict(first_rc)) != fingerprint(config) or first_rc.seeds != rc.seeds:
                message = (
                    f"both build {Path(sweep) / sub} with different configs; give one "
                    "experiment its own hydra.sweep.dir"
                )
                errors[message] = [" ".join(first["overrides"]), " ".join(overrides)]
        problems = self._data_errors(data, len(points))
        if errors:
            bad = len({p for users in errors.values() for p in users})
            lines = [f"{bad} of {len(points)} sweep points are invalid; no job was started"]
            for message, users in errors.items():  # a message shared by points: said once
                every = len(users) == len(points) > 1
                lines += ["  every sweep point"] if every else [f"  {u}" for u in users]
                lines.append(f"    -> {message}")
            _refuse("\n".join(lines + [f"  {line}" for line in problems]))
        if problems:
            _refuse("\n".join([f"no job was started: {problems[0]}", *problems[1:]]))
        for sweep in dict.fromkeys(s for s, _ in jobs):
            path = Path(sweep) / JOBS_FILE
            new = [job for (s, _), (job, _) in jobs.items() if s == sweep]
            names = {j["dir"] for j in new}
            kept = json.loads(path.read_text())["jobs"] if path.exists() else []
            write_json(path, {"jobs": [j for j in kept if j["dir"] not in names] + new})
        order = sorted(jobs.items(), key=lambda kv: -estimated_seconds(kv[1][1]))
        return [
            {"folder": Path(s) / d, **job, "overrides": _in_folder(job["overrides"], d)}
            for (s, d), (job, _) in order
        ]

    @staticmethod
    def _data_errors(data: dict, points: int) -> list[str]:
        """The data the points read, checked once per folder: lines saying which points read
        a folder that fails and its whole message, once however many points read it."""
        from bnlab.engine.data import DataError, load_mnist

        errors = []
        for (root, download), users in data.items():
            try:
                load_mnist(root, download)
            except DataError as e:
                who = (
                    "every sweep point reads"
                    if len(users) == points
                    else (f"{len(users)} of {points} sweep points read")
                )
                errors.append(f"{who} the data in {root}:")
                errors += [f"  {line}" for line in str(e).splitlines()]
        return errors

    def sweep(self, arguments):
        # Resolve the sweep folder once: its ${now:...} is then cached in the master config,
        # and every point composed from it (here and in the launcher's workers) gets the same
        # timestamp, so a sweep without hydra.sweep.dir stays in one folder.
        str(self.config.hydra.sweep.dir)
        from bnlab.runs.compose import PARENT_ENV

        os.environ[PARENT_ENV] = str(os.getpid())  # workers exit when this process dies
        launcher = self.config.hydra.launcher
        if "joblib" in str(launcher.get("_target_", "")) and launcher.get("n_jobs") == 0:
            _refuse(
                "hydra.launcher.n_jobs=0: joblib needs the number of jobs to run at once, 1 or "
                "more (-1: one per CPU); set hydra.launcher.n_jobs=2, for example"
            )
        BnlabSweeper.planned = {}
        jobs = self.plan(self.points(arguments))
        folders = {j["folder"]: j["seeds"] for j in jobs}
        with open_dict(self.config):  # launchers create the master sweep folder: use a real one
            self.config.hydra.sweep.dir = str(jobs[0]["folder"].parent)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        self.members = sum(len(seeds) for seeds in folders.values())
        BnlabSweeper.planned = folders
        before_by = {f: self._done({f: seeds}) for f, seeds in folders.items()}
        before, self.t0 = sum(before_by.values()), time.perf_counter()
        stop = threading.Event()
        watcher = threading.Thread(target=self._report, args=(folders, before, stop), daemon=True)
        watcher.start()
        joblib = "joblib" in str(launcher.get("_target_", ""))
        guard = _guard_workers(PARENT_ENV) if joblib and os.path.isdir("/proc") else None
        size = self.max_batch_size or len(jobs)
        returns, refused, gone = [], [], set()  # a line, and the folder, per refused point
        try:
            for i in range(0, len(jobs), size):
                batch = [j["overrides"] for j in jobs[i : i + size]]
                results = self.launcher.launch(batch, initial_job_idx=i)
                refused += [_refusal(r) for r in results if _refused(r)]
                gone |= {j["folder"] for j, r in zip(jobs[i : i + size], results) if _refused(r)}
                for r in results:
                    _ = r if _refused(r) else r.return_value  # raises if the job crashed
                returns.append(results)
        finally:
            if guard is not None:  # this process ends normally: workers shut down as usual
                guard.kill()
                guard.wait()
            stop.set()
            watcher.join()
            kept = {f: seeds for f, seeds in folders.items() if f not in gone}  # refused: not ours
            self.members = sum(len(seeds) for seeds in kept.values())
            before = sum(before_by[f] for f in kept)
            self._print(kept, before, time.perf_counter() - self.t0, final=True)
            if refused:
                print(f"error: {len(refused)} of {len(jobs)} sweep points did not train:",
                      *refused, sep="\n  ", file=sys.stderr)  # fmt: skip
        if refused:
            raise SystemExit(2)
        return returns

    @staticmethod
    def _done(folders: dict[Path, list[int]]) -> int:
        """The members of these run folders ({folder: seeds}) that are done: only the seeds
        planned, so a folder with more members than this sweep asks for counts no more."""
        from bnlab.runs.records import count_done

        return sum(count_done(f, seeds) for f, seeds in folders.items() if f.is_dir())

    def _report(self, folders: dict[Path, list[int]], before: int, stop: threading.Event) -> None:
        last = None
        while not stop.wait(self.progress_every):
            done = self._done(folders)
            if done != last:
                self._print(folders, before, time.perf_counter() - self.t0)
                last = done

    def _print(self, folders: dict[Path, list[int]], before: int, elapsed: float, final=False):
        done, total = self._done(folders), self.members
        new = done - before
        eta = ""
        if new and total > done and not final:
            eta = f", about {_fmt(elapsed / new * (total - done))} left"
        word = "finished" if final else "progress"
        log.info(
            f"sweep {word}: {done}/{total} members done ({before} skipped as already "
            f"done, {new} done since it started), {_fmt(elapsed)} elapsed{eta}"
        )


# Kills every process started with ENV=PID once process PID is gone (its end of stdin closes):
# a SIGKILLed sweep's joblib workers, including idle ones that never ran a job (those have no
# watcher of their own: bnlab.cli starts it with a job) and so would keep the resource
# trackers alive. Linux only (/proc).
GUARD = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the sweep's to handle
sys.stdin.buffer.read()
mark = f"{sys.argv[1]}={sys.argv[2]}".encode()
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            if mark in f.read().split(b"\\0") and int(pid) != os.getpid():
                os.kill(int(pid), signal.SIGKILL)
    except OSError:
        pass
"""


def _guard_workers(env: str):
    """Start the GUARD process for this process (whose pid is in os.environ[env])."""
    import subprocess

    cmd = [sys.executable, "-c", GUARD, env, os.environ[env]]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)


def _refused(result) -> bool:
    """Whether a job refused to train (bad input, a resume refusal, a full disk: bnlab.cli
    raises those as ConfigError), as opposed to crashing."""
    from hydra.core.utils import JobStatus

    from bnlab.runs.config import ConfigError

    return result.status == JobStatus.FAILED and isinstance(result._return_value, ConfigError)


def _refusal(result) -> str:
    """One line: the point (its overrides, without the run folder bnlab added) and why."""
    point = " ".join(o for o in result.overrides if not o.startswith("hydra.sweep.subdir="))
    return f"{point}: {result._return_value}"


def _outside(sweep: str, sub: str) -> str | None:
    """Why hydra.sweep.subdir would put a run folder outside its sweep folder, or None."""
    root = Path(sweep).resolve()
    path = (root / sub).resolve()
    if root in path.parents:
        return None
    return (
        f"hydra.sweep.subdir={sub} puts the run folder at {path}, outside the sweep folder "
        f"{sweep}; give a relative folder name inside it (by default each point is named "
        "from its overrides)"
    )


SAFE_NAME = re.compile(r"[A-Za-z0-9_.,=+~-][A-Za-z0-9_.,=+~/-]*")  # folders a point may join


def _run_folders(sweep: Path) -> dict[str, str]:
    """{fingerprint: folder name} of the run folders already in a sweep folder."""
    from bnlab.runs.collect import find_runs
    from bnlab.runs.records import fingerprint, read_config

    found = {}
    for run in find_runs(sweep) if sweep.is_dir() else []:
        name = run.relative_to(sweep).as_posix()
        try:
            config = read_config(run)
            if isinstance(config, dict) and SAFE_NAME.fullmatch(name):
                found.setdefault(fingerprint(config), name)
        except (OSError, ValueError, TypeError, yaml.YAMLError):
            continue  # collect and status name what is wrong with it
    return found


def _same_config_folder(sweep: Path, sub: str, known: dict[str, str], print_: str) -> str:
    """The folder a point runs in: its own when that holds a run already (the resume check
    compares them), else a folder of the sweep (or an earlier point) with the same config."""
    first = known.setdefault(print_, sub)
    return sub if (sweep / sub / "config.yaml").exists() else first


def _in_folder(overrides: list[str], sub: str) -> list[str]:
    """A job's overrides, sent to run folder `sub` of its sweep folder."""
    quoted = sub.replace("\\", "\\\\").replace("'", "\\'")  # Hydra's quoted-string escapes
    return [*overrides, f"hydra.sweep.subdir='{quoted}'"]


def _refuse(message: str):
    """The user's input is wrong: the message, without Hydra's traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"
