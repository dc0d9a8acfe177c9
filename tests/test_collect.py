"""The collector on a hand-built sweep gives exactly the expected tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from bnlab.collect import collect, flatten, main
from bnlab.records import write_config


def _member(run_dir, seed, history: str, summary: dict | None):
    d = run_dir / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "history.csv").write_text(history)
    if summary is not None:
        (d / "summary.json").write_text(json.dumps(summary))


def _sweep(root):
    cfg = {
        "name": "t",
        "seeds": [0, 1],
        "model": {"norm": "none", "widths": [100, 100]},
        "optim": {"lr": 0.01},
    }
    write_config(root / "0", cfg)
    head = "step,split,metric,layer,value\n"
    _member(
        root / "0",
        0,
        head + "0,test,acc,,0.1\n50,test,acc,,0.9\n",
        {
            "status": "finished",
            "test_acc": 0.9,
            "steps_done": 50,
            "wall_s": 2.0,
            "eval_s": 0.5,
            "error": None,
            "extra": "ignored",
        },
    )
    # killed mid-write: the half row must be dropped
    _member(root / "0", 1, head + "0,test,acc,,0.12\n50,test,ac", None)
    write_config(root / "1", {**cfg, "seeds": [0], "model": {"norm": "batch", "widths": [50]}})
    _member(
        root / "1",
        0,
        head + "0,test,loss,,2.3\n0,train,grad_mean_abs,fc1,0.5\n",
        {"status": "diverged", "test_acc": 0.1, "steps_done": 3, "wall_s": 1.0, "error": None},
    )


def test_flatten_uses_override_names():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": "[1,2]", "d": None}


def test_collect_gives_the_exact_tables(tmp_path):
    _sweep(tmp_path)
    runs, history = collect(tmp_path)
    nan = np.nan
    expect_runs = pd.DataFrame(
        {
            "run": ["0", "0", "1"],
            "seed": [0, 1, 0],
            "name": ["t", "t", "t"],
            "model.norm": ["none", "none", "batch"],
            "model.widths": ["[100,100]"] * 2 + ["[50]"],
            "optim.lr": [0.01] * 3,
            "status": ["finished", "unfinished", "diverged"],
            "test_acc": [0.9, nan, 0.1],
            "best_test_acc": [nan] * 3,
            "test_loss": [nan] * 3,
            "train_acc": [nan] * 3,
            "train_loss": [nan] * 3,
            "steps_done": pd.array([50, pd.NA, 3], dtype="Int64"),
            "wall_s": [2.0, nan, 1.0],
            "eval_s": [0.5, nan, nan],
            "steps_per_s": [nan] * 3,
            "error": pd.array([pd.NA] * 3, dtype="string"),
        }
    )
    pd.testing.assert_frame_equal(runs, expect_runs, check_dtype=False)
    assert runs["steps_done"].dtype == "Int64"
    expect_hist = pd.DataFrame(
        {
            "run": ["0", "0", "0", "1", "1"],
            "seed": [0, 0, 1, 0, 0],
            "step": [0, 50, 0, 0, 0],
            "split": ["test", "test", "test", "test", "train"],
            "metric": ["acc", "acc", "acc", "loss", "grad_mean_abs"],
            "layer": ["", "", "", "", "fc1"],
            "value": [0.1, 0.9, 0.12, 2.3, 0.5],
        }
    )
    pd.testing.assert_frame_equal(history, expect_hist, check_dtype=False)


def test_collect_cli_writes_parquet_idempotently(tmp_path, capsys):
    _sweep(tmp_path)
    assert main([str(tmp_path)]) == 0
    assert "done 2/3 members" in capsys.readouterr().out
    first = [pd.read_parquet(tmp_path / f) for f in ("runs.parquet", "history.parquet")]
    assert main([str(tmp_path)]) == 0
    second = [pd.read_parquet(tmp_path / f) for f in ("runs.parquet", "history.parquet")]
    for a, b in zip(first, second):
        pd.testing.assert_frame_equal(a, b)


def test_collect_cli_refuses_an_empty_folder(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert "no bnlab runs" in capsys.readouterr().err
