"""The command line for real: a Hydra multirun, a bad sweep point, bad input, missing data."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
from conftest import REPO

from bnlab.collect import main as collect_main

pytestmark = pytest.mark.slow
SHORT = [
    "train.steps=30",
    "train.eval_every=10",
    "data.eval_train_size=1000",
    "train.eval_batch=2000",
]


def bnlab(*args: str, root) -> subprocess.CompletedProcess:
    env = {**os.environ, "BNLAB_DATA_ROOT": str(root), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", "bnlab", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_real_multirun_then_collect(mnist_root, tmp_path):
    sweep = tmp_path / "sweep"
    out = bnlab(
        "-m",
        "model.norm=none,batch",
        "model.activation=sigmoid",
        "optim.lr=0.01",
        "seeds=[0,1]",
        *SHORT,
        f"hydra.sweep.dir={sweep}",
        root=mnist_root,
    )
    assert out.returncode == 0, out.stderr
    assert collect_main([str(sweep)]) == 0
    runs = pd.read_parquet(sweep / "runs.parquet")
    assert len(runs) == 4 and set(runs["status"]) == {"finished"}
    assert sorted(runs["model.norm"].unique()) == ["batch", "none"]
    assert (runs["test_acc"] > 0.2).all() and (runs["steps_done"] == 30).all()
    history = pd.read_parquet(sweep / "history.parquet")
    assert set(history["step"]) == {0, 10, 20, 30}
    assert len(history.groupby(["run", "seed"])) == 4


def test_a_bad_sweep_value_fails_before_any_job_starts(mnist_root, tmp_path):
    sweep = tmp_path / "sweep"
    out = bnlab(
        "-m",
        "model.activation=sigmoid,swish",
        "model.norm=none,batch",
        *SHORT,
        f"hydra.sweep.dir={sweep}",
        root=mnist_root,
    )
    assert out.returncode != 0
    assert "2 of 4 sweep points are invalid; no job was started" in out.stderr
    assert "choose one of: relu, lrelu, sigmoid, softplus, tanh" in out.stderr
    assert not list(sweep.glob("*/config.yaml"))
    out = bnlab("-m", "experiment=nope", f"hydra.sweep.dir={sweep}", root=mnist_root)
    assert out.returncode != 0 and "demo" in out.stderr  # Hydra lists the experiments


def test_unknown_key_and_missing_data_fail_before_training(tmp_path):
    out = bnlab("model.fooo=1", f"hydra.run.dir={tmp_path / 'a'}", root=tmp_path)
    assert out.returncode != 0 and "fooo" in out.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    out = bnlab(
        f"data.root={empty}", "data.download=false", f"hydra.run.dir={tmp_path / 'b'}", root=empty
    )
    assert out.returncode != 0
    assert "train-images-idx3-ubyte.gz" in out.stderr and "data=mnist5k" in out.stderr
    assert not list((tmp_path / "b").glob("seed*/history.csv"))  # nothing trained
