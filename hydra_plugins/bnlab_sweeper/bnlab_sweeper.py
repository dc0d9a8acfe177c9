"""bnlab's Hydra sweeper (`hydra/sweeper=bnlab`, the default in configs/config.yaml).

Hydra's basic sweeper, plus two things a long sweep needs. (It lives in the hydra_plugins
namespace because Hydra loads plugins only from there; bnlab itself never imports Hydra.)

- Every sweep point is composed and validated before any job starts: one bad value fails the
  whole command at once, listing each bad point with the field and the allowed values.
- While jobs run, the parent prints done/total members and an estimate of the time left,
  counting summaries in the sweep folder (so it works with any launcher: basic, joblib,
  submitit). Members already done by an earlier invocation are counted as skipped.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

from bnlab.config import ConfigError, load_config
from bnlab.records import JOBS_FILE, count_done, write_json

log = logging.getLogger(__name__)


class BnlabSweeper(BasicSweeper):
    def __init__(self, max_batch_size=None, params=None, progress_every: float = 10.0):
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.progress_every = progress_every

    def validate_batch_is_legal(self, batch) -> None:
        super().validate_batch_is_legal(batch)  # Hydra: every point composes
        errors, jobs = [], []
        for overrides in batch:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            try:
                rc = load_config({k: v for k, v in cfg.items() if k != "hydra"})
            except ConfigError as e:
                errors.append(f"  {' '.join(overrides)}\n    -> {e}")
                continue
            jobs.append(
                {
                    "dir": str(cfg.hydra.sweep.subdir),
                    "seeds": list(rc.seeds),
                    "overrides": list(overrides),
                }
            )
        if errors:
            raise ConfigError(
                f"{len(errors)} of {len(batch)} sweep points are invalid; no job "
                "was started:\n" + "\n".join(errors)
            )
        # the whole sweep, so that status and collect can name members not started yet; jobs
        # of other sweeps sharing this folder (experiments that reuse runs) are kept
        path = Path(self.config.hydra.sweep.dir) / JOBS_FILE
        new = {j["dir"] for j in jobs}
        kept = json.loads(path.read_text())["jobs"] if path.exists() else []
        write_json(path, {"jobs": [j for j in kept if j["dir"] not in new] + jobs})
        self.members = sum(len(j["seeds"]) for j in jobs)

    def sweep(self, arguments):
        self.members = 0
        sweep_dir = Path(self.config.hydra.sweep.dir)
        before = count_done(sweep_dir)
        stop = threading.Event()
        watcher = threading.Thread(target=self._report, args=(sweep_dir, before, stop), daemon=True)
        watcher.start()
        try:
            return super().sweep(arguments)
        finally:
            stop.set()
            watcher.join()
            self._print(sweep_dir, before, time.perf_counter() - self.t0, final=True)

    def _report(self, sweep_dir: Path, before: int, stop: threading.Event) -> None:
        self.t0, last = time.perf_counter(), None
        while not stop.wait(self.progress_every):
            done = count_done(sweep_dir)
            if done != last:
                self._print(sweep_dir, before, time.perf_counter() - self.t0)
                last = done

    def _print(self, sweep_dir: Path, before: int, elapsed: float, final: bool = False) -> None:
        done, total = count_done(sweep_dir), self.members
        new = done - before
        eta = ""
        if new and total > done and not final:
            eta = f", about {_fmt(elapsed / new * (total - done))} left"
        word = "finished" if final else "progress"
        log.info(
            f"sweep {word}: {done}/{total} members done ({before} skipped as already "
            f"done, {new} trained), {_fmt(elapsed)} elapsed{eta}"
        )


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"
