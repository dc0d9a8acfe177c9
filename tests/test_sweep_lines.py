"""What a sweep says, for real: one line per refused point, bad launcher settings, counts that
add up, Ctrl-C and SIGKILL leaving no process behind (issue 30)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, run_bnlab

pytestmark = pytest.mark.slow
TINY = ["train.eval_every=10", "data.eval_train_size=1000", "train.eval_batch=2000"]


def bnlab(*args, root, timeout=300) -> subprocess.CompletedProcess:
    return run_bnlab("train", "-m", *args, root=root, timeout=timeout)


def test_joblib_with_zero_jobs_is_one_line_naming_the_fix(mnist_root, tmp_path):
    sweep = tmp_path / "sweep"
    out = bnlab("model.norm=none,batch", "seeds=[0]", "hydra/launcher=joblib",
                "hydra.launcher.n_jobs=0", f"hydra.sweep.dir={sweep}", root=mnist_root)  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1 and "hydra.launcher.n_jobs=0" in out.stderr
    assert "hydra.launcher.n_jobs=2" in out.stderr and not sweep.exists()


@pytest.mark.parametrize("n_jobs", ["1", "-1000"])
def test_joblib_with_one_job_at_a_time_runs_in_the_sweeps_process(mnist_root, tmp_path, n_jobs):
    """joblib runs the jobs in the sweep's own process then: it must not take itself for a
    worker whose parent died (it killed itself, exit 137)."""
    out = bnlab("model.norm=none,batch", "train.steps=20", *TINY, "seeds=[0]",
                "hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}",
                f"hydra.sweep.dir={tmp_path}", root=mnist_root)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "sweep finished: 2/2 members done" in out.stdout


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]])
def test_resume_refusals_in_a_sweep_are_one_line_per_point(mnist_root, tmp_path, launcher):
    sweep = tmp_path / "sweep"
    common = [*TINY, "seeds=[0]", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${model.norm}"]
    out = bnlab("model.norm=none,batch", "train.steps=20", *common, root=mnist_root)
    assert out.returncode == 0, out.stderr
    # the same folders with another number of steps: both refuse, a new point trains
    out = bnlab("model.norm=none,batch,layer", "train.steps=30", *common, *launcher,
                root=mnist_root)  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[-3] == "error: 2 of 3 sweep points did not train:", out.stderr
    for norm, line in zip(("none", "batch"), lines[-2:]):
        assert line.startswith(f"  model.norm={norm} train.steps=30"), line
        assert "train.steps: 20 -> 30" in line and "train.resume=false" in line
    assert "hydra.sweep.subdir" not in out.stderr and "Error executing job" not in out.stderr
    assert (sweep / "layer" / "seed0" / "summary.json").exists()
    # the refused folders' members (another config's) are not counted as this sweep's
    assert "sweep finished: 1/1 members done (0 skipped as already done, 1 done" in out.stdout


def test_progress_counts_only_the_members_this_sweep_asks_for(mnist_root, tmp_path):
    sweep = tmp_path / "sweep"
    common = [*TINY, "train.steps=20", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=x"]
    assert bnlab("model.norm=batch", "seeds=[0,1,2]", *common, root=mnist_root).returncode == 0
    # the same folder, asked for one of its three members: done already, so skipped
    out = bnlab("model.norm=batch", "seeds=[1]", *common, root=mnist_root)
    assert out.returncode == 0, out.stderr
    assert "sweep finished: 1/1 members done (1 skipped as already done, 0 done" in out.stdout


def _python_children(pid: int) -> list[str]:
    """The processes of a session (a killed parent's workers and resource trackers)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,sid=,args="], capture_output=True, text=True)
    rows = [line.split(None, 2) for line in out.stdout.splitlines()]
    return [f"{p} {a}" for p, s, a in rows if s == str(pid) and p != str(pid)]


@pytest.mark.parametrize("delay", [1.5, 2.5, 3.5, 6.0])
def test_sigkill_of_a_joblib_sweep_leaves_no_process(mnist_root, tmp_path, delay):
    """SIGKILL to the parent alone (as the OOM killer does), at moments before and after the
    workers start: every worker and resource tracker exits within seconds. One point for two
    workers: one worker never gets a job (it idled on, keeping the trackers alive)."""
    env = {**os.environ, "BNLAB_DATA_ROOT": str(mnist_root), "HYDRA_FULL_ERROR": "0"}
    cmd = [sys.executable, "-m", "bnlab", "train", "-m", "model.norm=batch",
           "train.steps=100000", *TINY, "seeds=[0]", "hydra/launcher=joblib",
           "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    p = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(delay)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    deadline = time.time() + 10
    while (left := _python_children(p.pid)) and time.time() < deadline:
        time.sleep(0.2)
    for row in left:  # clean up before failing
        os.kill(int(row.split()[0]), signal.SIGKILL)
    assert not left, left


def test_done_members_are_counted_per_seed_asked_for_and_a_foreign_summary_is_not_done(tmp_path):
    from bnlab.runs.records import count_done

    for seed, text in ((0, '{"status": "finished"}'), (1, "[1]"), (2, '{"status": "finished"}')):
        (tmp_path / f"seed{seed}").mkdir()
        (tmp_path / f"seed{seed}" / "summary.json").write_text(text)
    (tmp_path / "replaced-1" / "seed0").mkdir(parents=True)  # set aside by train.resume=false
    (tmp_path / "replaced-1" / "seed0" / "summary.json").write_text('{"status": "finished"}')
    assert count_done(tmp_path, [0, 1]) == 1 and count_done(tmp_path, [5]) == 0
