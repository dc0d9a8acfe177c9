"""The collector on a hand-built sweep gives exactly the expected tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bnlab.runs.collect import collect, flatten, main, read_tables
from bnlab.runs.export import main as export_main
from bnlab.runs.records import write_config
from bnlab.runs.status import main as status_main
from bnlab.runs.summary import main as summary_main


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
            "git_commit": "abc123",
            "git_dirty": False,
            "torch_version": "2.14.1",
            "host": "node1",
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
            "code_sha256": pd.array([pd.NA] * 3, dtype="string"),
            "git_commit": pd.array(["abc123", pd.NA, pd.NA], dtype="string"),
            "git_dirty": pd.array([False, pd.NA, pd.NA], dtype="boolean"),
            "torch_version": pd.array(["2.14.1", pd.NA, pd.NA], dtype="string"),
            "cpu_kernels": pd.array([pd.NA] * 3, dtype="string"),
            "host": pd.array(["node1", pd.NA, pd.NA], dtype="string"),
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
    assert "2/3 members done (finished 1, diverged 1, unfinished 1)" in capsys.readouterr().out
    first = [pd.read_parquet(tmp_path / f) for f in ("runs.parquet", "history.parquet")]
    assert main([str(tmp_path)]) == 0
    second = [pd.read_parquet(tmp_path / f) for f in ("runs.parquet", "history.parquet")]
    for a, b in zip(first, second):
        pd.testing.assert_frame_equal(a, b)


def test_collect_cli_refuses_an_empty_folder(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert "no bnlab runs" in capsys.readouterr().err


def test_a_queued_sweep_reports_its_missing_members(tmp_path, capsys):
    """A sweep just submitted (SLURM): jobs.json and no run folder yet."""
    jobs = [{"dir": f"model.norm={n}", "seeds": [0, 1, 2], "overrides": []} for n in "ab"]
    (tmp_path / "jobs.json").write_text(json.dumps({"jobs": jobs}))
    assert status_main([str(tmp_path)]) == 1
    assert "0/6 members done (missing 6)" in capsys.readouterr().out
    assert main([str(tmp_path)]) == 0
    assert "0/6 members done (missing 6)" in capsys.readouterr().out
    runs, _ = read_tables(tmp_path)
    assert len(runs) == 6 and set(runs["status"]) == {"missing"}
    assert runs["test_acc"].isna().all()


BAD_FILES = {
    "truncated summary": ("0/seed0/summary.json", '{"status": "fini'),
    "empty summary": ("0/seed0/summary.json", ""),
    "list summary": ("0/seed0/summary.json", "[1, 2]"),
    "garbage history row": ("0/seed0/history.csv", "step,split,metric,layer,value\nx,y,z\n1,a"),
    "NUL bytes in history": ("0/seed0/history.csv", "step,split,metric,layer,value\n" + "\0" * 50),
    "broken config": ("1/config.yaml", "model: [unclosed\n"),
    "list config": ("1/config.yaml", "- 1\n- 2\n"),
    "truncated jobs.json": ("jobs.json", '{"jobs": [{"dir": "0", "se'),
    "malformed jobs.json": ("jobs.json", '{"jobs": [{"dir": 5}]}'),
    "text in a number": ("0/seed0/summary.json", '{"status": "finished", "test_acc": "high"}'),
    "unknown status": ("0/seed0/summary.json", '{"status": "done"}'),
    "seeds not a list": ("1/config.yaml", "seeds: oops\n"),
    "fractional steps": (
        "0/seed0/summary.json",
        '{"status": "finished", "test_acc": 0.9, "steps_done": 40.5}',
    ),
    "accuracy above 1": ("0/seed0/summary.json", '{"status": "finished", "test_acc": 1.7}'),
    "infinite accuracy": ("0/seed0/summary.json", '{"status": "finished", "test_acc": Infinity}'),
    "no test accuracy": ("0/seed0/summary.json", '{"status": "finished", "steps_done": 50}'),
    "negative time": (
        "0/seed0/summary.json",
        '{"status": "finished", "test_acc": 0.9, "wall_s": -1}',
    ),
    "another seed's summary": (
        "0/seed0/summary.json",
        '{"status": "finished", "test_acc": 0.9, "seed": 1}',
    ),
    "text for a flag": (
        "0/seed0/summary.json",
        '{"status": "finished", "test_acc": 0.9, "git_dirty": "no"}',
    ),
}


@pytest.mark.parametrize("bad", BAD_FILES, ids=list(BAD_FILES))
def test_one_bad_file_is_reported_and_the_rest_collected(tmp_path, capsys, bad):
    _sweep(tmp_path)
    path, text = BAD_FILES[bad]
    (tmp_path / path).write_text(text)
    runs, _ = collect(tmp_path)
    corrupt = runs[runs["status"] == "corrupt"]
    assert len(corrupt) == 1 and str(tmp_path / path) in corrupt["error"].iloc[0]
    good = runs[runs["status"] != "corrupt"]
    assert len(good) == (3 if path == "jobs.json" else 2)  # the others, collected as usual
    assert status_main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "corrupt 1" in out and str(tmp_path / path) in out
    assert main([str(tmp_path)]) == 0
    # summary and export go on with the members that are done
    assert summary_main([str(tmp_path)]) == 0
    assert export_main(["--to", "tensorboard", str(tmp_path), "--out", str(tmp_path / "tb")]) == 0


def test_a_finished_member_without_its_history_is_corrupt(tmp_path):
    _sweep(tmp_path)
    (tmp_path / "0" / "seed0" / "history.csv").unlink()
    runs, _ = collect(tmp_path)
    row = runs[(runs["run"] == "0") & (runs["seed"] == 0)].iloc[0]
    assert row["status"] == "corrupt" and "history.csv: missing" in row["error"]


def test_tables_from_two_collects_are_refused(tmp_path):
    """A kill between the two renames leaves runs.parquet of one collect beside
    history.parquet of another: readers must notice."""
    _sweep(tmp_path)
    assert main([str(tmp_path)]) == 0
    old_history = (tmp_path / "history.parquet").read_bytes()
    runs, history = read_tables(tmp_path)
    assert len(runs) == 3 and len(history) == 5
    assert main([str(tmp_path)]) == 0
    (tmp_path / "history.parquet").write_bytes(old_history)
    with pytest.raises(FileNotFoundError, match="not from the same collect"):
        read_tables(tmp_path)


def test_summary_groups_by_every_varying_setting(tmp_path, capsys):
    for i, (act, norm) in enumerate([("relu", "none"), ("sigmoid", "none"), ("relu", "batch")]):
        cfg = {"seeds": [0, 1], "model": {"activation": act, "norm": norm}}
        write_config(tmp_path / str(i), cfg)
        for seed in (0, 1):
            acc = 0.5 + 0.1 * i + 0.01 * seed
            summary = {"status": "finished", "test_acc": acc}
            _member(tmp_path / str(i), seed, "step,split,metric,layer,value\n", summary)
    assert summary_main([str(tmp_path)]) == 2  # not collected yet: says what to run
    assert "bnlab collect" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 0
    capsys.readouterr()
    assert summary_main([str(tmp_path), "--out", str(tmp_path / "s.csv")]) == 0
    table = pd.read_csv(tmp_path / "s.csv")
    assert len(table) == 3 and set(table["seeds"]) == {2}
    assert {"model.activation", "model.norm"} <= set(table.columns)
    row = table[(table["model.activation"] == "sigmoid")].iloc[0]
    assert row["test_acc_mean"] == pytest.approx(0.605)
