"""Sweeps that survive: resume after SIGKILL, failure isolation, submitit, joblib, status.

Real processes, bounded in time (every subprocess has a timeout)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import REPO

from bnlab.runs.collect import collect
from bnlab.runs.config import sweep_dirname
from bnlab.runs.records import count_done
from bnlab.runs.status import main as status_main

pytestmark = pytest.mark.slow
SWEEP = [
    "-m",
    "model.activation=sigmoid",
    "optim.lr=0.01",
    "model.norm=none,batch,layer",
    "seeds=[0,1]",
    "train.steps=1500",
    "train.eval_every=250",
    "data.eval_train_size=1000",
    "train.eval_batch=5000",
]


def _cmd(*args):
    return [sys.executable, "-m", "bnlab", *args]


def _env(root):
    # these tests kill and resume; test_integrity tests the refusal of a resume with other
    # code, which an edit to the source tree while they run would trigger here
    allow = {"BNLAB_ALLOW_CODE_CHANGE": "1"}
    return {**os.environ, "BNLAB_DATA_ROOT": str(root), "HYDRA_FULL_ERROR": "0", **allow}


def _run(*args, root, timeout=300):
    return subprocess.run(
        _cmd(*args), cwd=REPO, env=_env(root), capture_output=True, text=True, timeout=timeout
    )


def _kill_when(proc, ready, timeout=120):
    """SIGKILL the process group of proc (parent and workers) as soon as ready() is true."""
    t0 = time.time()
    while not ready():
        assert proc.poll() is None, "finished before it could be killed"
        assert time.time() - t0 < timeout
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _tables(sweep):
    runs, history = collect(sweep)
    # times, and the code's version (see _env; a commit between two sweeps changes it)
    drop = ["wall_s", "eval_s", "steps_per_s", "code_sha256", "git_commit", "git_dirty"]
    runs = runs.drop(columns=drop).sort_values(["run", "seed"])
    keys = ["run", "seed", "step", "split", "metric", "layer"]
    return runs.reset_index(drop=True), history.sort_values(keys).reset_index(drop=True)


def test_sweep_dirnames_are_short_safe_and_stable():
    assert sweep_dirname("model.norm=batch,optim.lr=0.01") == "model.norm=batch,optim.lr=0.01"
    assert sweep_dirname("") == "default"
    assert sweep_dirname("model.widths=[100,100]") == "model.widths=_100,100_"
    long = ",".join(f"model.x{i}=value{i}" for i in range(30))
    name = sweep_dirname(long)
    assert len(name) <= 96 and name == sweep_dirname(long) and name != sweep_dirname(long + "1")


def test_killed_sweep_resumes_to_the_same_tables_without_recomputing(mnist_root, tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(
        _cmd(*SWEEP, f"hydra.sweep.dir={killed}"),
        cwd=REPO,
        env=_env(mnist_root),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    _kill_when(proc, lambda: count_done(killed) >= 2)  # first job done, the next one running
    assert 2 <= count_done(killed) < 6
    first = sorted(killed.glob("*/seed*/summary.json"))
    stamps = {p: p.stat().st_mtime_ns for p in first}
    assert status_main([str(killed)]) == 1  # not everything is done
    out = _run(*SWEEP, f"hydra.sweep.dir={killed}", root=mnist_root)
    assert out.returncode == 0, out.stderr
    assert "already done, skipped" in out.stdout
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # not recomputed
    assert _run(*SWEEP, f"hydra.sweep.dir={clean}", root=mnist_root).returncode == 0
    runs_k, hist_k = _tables(killed)
    runs_c, hist_c = _tables(clean)
    assert len(runs_k) == 6 and set(runs_k["status"]) == {"finished"}
    pd.testing.assert_frame_equal(runs_k, runs_c)
    pd.testing.assert_frame_equal(hist_k, hist_c)
    assert not hist_k.duplicated(["run", "seed", "step", "split", "metric", "layer"]).any()


def test_a_job_killed_mid_write_shows_as_unfinished_until_rerun(mnist_root, tmp_path):
    run_dir = tmp_path / "run"
    args = [
        "model.norm=batch",
        "seeds=[0]",
        "train.steps=4000",
        "train.eval_every=50",
        "data.eval_train_size=500",
        "train.eval_batch=2000",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.Popen(
        _cmd(*args),
        cwd=REPO,
        env=_env(mnist_root),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    history = run_dir / "seed0" / "history.csv"
    _kill_when(proc, lambda: history.exists() and history.stat().st_size > 2000)
    runs, hist = collect(run_dir)
    assert runs["status"].tolist() == ["unfinished"] and len(hist) > 10
    assert hist["value"].notna().all()
    out = _run(*args, root=mnist_root)
    assert out.returncode == 0, out.stderr
    runs, hist = collect(run_dir)
    assert runs["status"].tolist() == ["finished"] and hist["step"].max() == 4000
    assert not hist.duplicated(["step", "split", "metric", "layer"]).any()


def test_diverging_and_crashing_points_are_isolated_and_reported(tmp_path):
    sweep = tmp_path / "sweep"
    # batch 2000 leaves the 3,600 training digits of classes 0-8 (mnist5k) less than two
    # batches: that job raises at run time (validation knows only the whole training set,
    # 4,000); lr 1e6 diverges
    out = _run(
        "-m",
        "data=mnist5k",
        "data.train_classes=[0,1,2,3,4,5,6,7,8]",
        "data.batch_size=64,2000",
        "optim.lr=0.01,1e6",
        "seeds=[0]",
        "train.steps=200",
        "train.eval_every=100",
        f"hydra.sweep.dir={sweep}",
        root=tmp_path,
    )
    assert out.returncode != 0  # the sweep says that something failed
    runs, _ = collect(sweep)
    by = runs.set_index(["data.batch_size", "optim.lr"])
    assert by.loc[(64, 0.01), "status"] == "finished" and by.loc[(64, 0.01), "test_acc"] > 0.5
    assert by.loc[(64, 1e6), "status"] == "diverged"
    for lr in (0.01, 1e6):
        assert by.loc[(2000, lr), "status"] == "failed"
        assert "fewer than two batches" in by.loc[(2000, lr), "error"]


def test_submitit_local_launcher_runs_and_collects(tmp_path):
    sweep = tmp_path / "sweep"
    out = _run(
        "-m",
        "hydra/launcher=submitit_local",
        "data=mnist5k",
        "model.norm=none,batch",
        "seeds=[0]",
        "train.steps=100",
        "train.eval_every=50",
        f"hydra.sweep.dir={sweep}",
        root=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    runs, history = collect(sweep)
    assert len(runs) == 2 and set(runs["status"]) == {"finished"}
    assert set(history["step"]) == {0, 50, 100}


def test_joblib_launcher_gives_the_same_results_as_the_basic_one(tmp_path):
    args = [
        "-m",
        "data=mnist5k",
        "model.norm=none,batch",
        "seeds=[0,1]",
        "train.steps=150",
        "train.eval_every=50",
    ]
    for name, extra in (
        ("basic", []),
        ("joblib", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]),
    ):
        out = _run(*args, *extra, f"hydra.sweep.dir={tmp_path / name}", root=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
    (ra, ha), (rb, hb) = _tables(tmp_path / "basic"), _tables(tmp_path / "joblib")
    pd.testing.assert_frame_equal(ra, rb)
    pd.testing.assert_frame_equal(ha, hb)


def test_experiments_in_one_sweep_share_runs_once_and_start_longest_first(tmp_path):
    """fig6 and fig9 share their batch-4 runs: one sweep over both plans 8 + 2 runs, not 12,
    starts the batch-256 runs first, and writes each experiment's sweep folder."""
    env = {**_env(tmp_path), "BNLAB_RESULTS": str(tmp_path)}
    tiny = ["seeds=[0]", "train.steps=6", "train.eval_every=3", "train.eval_dense_until=0"]
    tiny += ["data=mnist5k", "data.holdout=0", "model.population_batches=2", "probes.batch=64"]
    out = subprocess.run(
        _cmd("-m", "experiment=mlds2017_fig9,mlds2017_fig6", *tiny),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    log = (out.stdout + out.stderr).splitlines()
    launched = [line.split(" : ")[1] for line in log if "\t#" in line]
    assert len(launched) == 10 and all("experiment=mlds2017_fig" in j for j in launched)
    assert [j.count("data.batch_size=256") for j in launched[:2]] == [1, 1]
    runs, _ = collect(tmp_path / "sweeps" / "mlds2017_batch")
    assert len(runs) == 10 and set(runs["status"]) == {"finished"}
    assert sorted(runs["model.norm"].value_counts()) == [1, 1, 4, 4]  # renorm, layer: batch 4


def test_experiments_that_would_build_different_runs_in_one_folder_start_nothing(tmp_path):
    out = _run(
        "-m",
        "experiment=mlds2017_fig6,mlds2017_fig6_epochs",
        f"hydra.sweep.dir={tmp_path / 'both'}",  # forces both into one folder
        root=tmp_path,
    )
    assert out.returncode != 0 and "with different configs" in out.stderr
    assert "no job was started" in out.stderr and not list(tmp_path.rglob("history.csv"))
