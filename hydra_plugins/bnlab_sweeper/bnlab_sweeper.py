"""bnlab's Hydra sweeper (`hydra/sweeper=bnlab`, the default in bnlab/conf/config.yaml).

Hydra's basic sweeper, plus what a long sweep needs. (It lives in the hydra_plugins
namespace because Hydra loads plugins only from there; bnlab itself never imports Hydra.)

- Several experiments in one sweep: `bnlab train -m experiment=a,b` expands each
  experiment's own `hydra.sweeper.params` (command-line values of the same key win) and runs
  every point of every experiment in its experiment's sweep folder, as one pool of jobs: a
  parallel launcher keeps all its workers busy until the last job, instead of idling at the
  end of each experiment. Points of different experiments that land in the same run folder
  (experiments that reuse each other's runs) run once; if their configs differ, nothing starts.
- Every point is composed and validated before any job starts: one bad value fails the
  whole command at once, listing each bad point with the field and the allowed values.
- Jobs start longest first (bnlab.train.estimated_seconds), so a parallel launcher does not
  end on one long job while its other workers idle.
- While jobs run, the parent prints done/total members and an estimate of the time left,
  counting summaries in the run folders (so it works with any launcher: basic, joblib,
  submitit). Members already done by an earlier invocation are counted as skipped.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict

from bnlab.compose import PARENT_ENV, hydra_message, unwritable
from bnlab.config import ConfigError, load_config, to_dict
from bnlab.data import DataError, load_mnist
from bnlab.records import JOBS_FILE, count_done, write_json
from bnlab.train import estimated_seconds

log = logging.getLogger(__name__)


class BnlabSweeper(BasicSweeper):
    def __init__(self, max_batch_size=None, params=None, progress_every: float = 10.0):
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.progress_every = progress_every

    def points(self, arguments: list[str]) -> list[list[str]]:
        """Every sweep point (its list of overrides), experiment by experiment when the
        command line sweeps `experiment`."""
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
        errors, jobs, data = [], {}, {}
        for overrides in points:
            try:
                cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
                rc = load_config({k: v for k, v in cfg.items() if k != "hydra"})
            except (ConfigError, HydraException) as e:
                message = hydra_message(e) if isinstance(e, HydraException) else e
                errors.append(f"  {' '.join(overrides)}\n    -> {message}")
                continue
            if rc.data.name == "mnist":
                data.setdefault((rc.data.root, rc.data.download), overrides)
            sweep, sub = str(cfg.hydra.sweep.dir), str(cfg.hydra.sweep.subdir)
            if problem := unwritable(sweep):
                errors.append(f"  {' '.join(overrides)}\n    -> cannot write {sweep}: {problem}")
                continue
            job = {"dir": sub, "seeds": list(rc.seeds), "overrides": list(overrides)}
            first, first_rc = jobs.setdefault((sweep, sub), (job, rc))
            if to_dict(first_rc) != to_dict(rc):
                errors.append(
                    f"  {' '.join(first['overrides'])}\n  {' '.join(overrides)}\n    -> both "
                    f"build {Path(sweep) / sub} with different configs; give one experiment "
                    "its own hydra.sweep.dir"
                )
        for (root, download), overrides in data.items():  # once here, not in every job
            try:
                load_mnist(root, download)
            except DataError as e:
                errors.append(f"  {' '.join(overrides)}\n    -> {' '.join(str(e).split())}")
        if errors:
            _refuse(
                f"{len(errors)} of {len(points)} sweep points are invalid; no job "
                "was started:\n" + "\n".join(errors)
            )
        for sweep in dict.fromkeys(s for s, _ in jobs):
            path = Path(sweep) / JOBS_FILE
            new = [job for (s, _), (job, _) in jobs.items() if s == sweep]
            names = {j["dir"] for j in new}
            kept = json.loads(path.read_text())["jobs"] if path.exists() else []
            write_json(path, {"jobs": [j for j in kept if j["dir"] not in names] + new})
        order = sorted(jobs.items(), key=lambda kv: -estimated_seconds(kv[1][1]))
        return [{"folder": Path(s) / d, **job} for (s, d), (job, _) in order]

    def sweep(self, arguments):
        # Resolve the sweep folder once: its ${now:...} is then cached in the master config,
        # and every point composed from it (here and in the launcher's workers) gets the same
        # timestamp, so a sweep without hydra.sweep.dir stays in one folder.
        str(self.config.hydra.sweep.dir)
        os.environ[PARENT_ENV] = str(os.getpid())  # workers exit when this process dies
        jobs = self.plan(self.points(arguments))
        folders = [j["folder"] for j in jobs]
        with open_dict(self.config):  # launchers create the master sweep folder: use a real one
            self.config.hydra.sweep.dir = str(folders[0].parent)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        self.members = sum(len(j["seeds"]) for j in jobs)
        before, self.t0 = self._done(folders), time.perf_counter()
        stop = threading.Event()
        watcher = threading.Thread(target=self._report, args=(folders, before, stop), daemon=True)
        watcher.start()
        size = self.max_batch_size or len(jobs)
        returns = []
        try:
            for i in range(0, len(jobs), size):
                batch = [j["overrides"] for j in jobs[i : i + size]]
                results = self.launcher.launch(batch, initial_job_idx=i)
                for r in results:
                    _ = r.return_value  # raises if the job failed
                returns.append(results)
        finally:
            stop.set()
            watcher.join()
            self._print(folders, before, time.perf_counter() - self.t0, final=True)
        return returns

    @staticmethod
    def _done(folders: list[Path]) -> int:
        return sum(count_done(f) for f in folders if f.is_dir())

    def _report(self, folders: list[Path], before: int, stop: threading.Event) -> None:
        last = None
        while not stop.wait(self.progress_every):
            done = self._done(folders)
            if done != last:
                self._print(folders, before, time.perf_counter() - self.t0)
                last = done

    def _print(self, folders: list[Path], before: int, elapsed: float, final=False) -> None:
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


def _refuse(message: str):
    """The user's input is wrong: the message, without Hydra's traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"
