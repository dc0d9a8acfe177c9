"""Live TensorBoard logging while training (train.log_to=tensorboard, bnlab.runs.livelog): read
back with TensorBoard's own reader, and without any effect on training or on a run's identity."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_cfg

import bnlab
from bnlab.runs.config import ConfigError
from bnlab.runs.livelog import LiveLog
from bnlab.runs.records import read_history

SEEDS = (0, 1)
STEPS = [0, 10, 20, 30]  # the evaluations of the short run
SHORT = [
    "model.norm=batch",
    f"seeds=[{','.join(map(str, SEEDS))}]",
    "train.steps=30",
    "train.eval_every=10",
    "data.eval_train_size=1000",
    "train.save_model=false",
    *(f"probes.{p}.every=0" for p in ("weights", "grads", "activations", "mismatch")),
    *(f"probes.{p}.every=0" for p in ("jacobian", "ics_grad", "landscape")),
]


def scalars(folder: Path) -> dict:
    """{tag: [(step, value), ...]} of an event folder, read as TensorBoard reads it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


@pytest.fixture(scope="module")
def runs(mnist, tmp_path_factory) -> tuple[Path, Path]:
    """The same short real-MNIST run without and with train.log_to=tensorboard."""
    root = tmp_path_factory.mktemp("livelog")
    bnlab.run(make_cfg(*SHORT), root / "plain", data=mnist)
    bnlab.run(make_cfg(*SHORT, "train.log_to=tensorboard"), root / "live", data=mnist)
    return root / "plain", root / "live"


@pytest.mark.slow
def test_the_writer_does_not_steer_training(runs):
    plain, live = runs
    assert not (plain / "tensorboard").exists()
    for s in SEEDS:
        history = f"seed{s}/history.csv"
        assert (live / history).read_bytes() == (plain / history).read_bytes(), history
        a, b = (json.loads((d / f"seed{s}/summary.json").read_text()) for d in (plain, live))
        assert a["config_sha256"] == b["config_sha256"]  # not part of the run's identity


@pytest.mark.slow
def test_a_folder_trained_without_it_resumes_with_it(runs, mnist, capsys):
    plain, _ = runs
    done = bnlab.run(make_cfg(*SHORT, "train.log_to=tensorboard"), plain, data=mnist)
    assert [m["status"] for m in done] == ["finished"] * len(SEEDS)
    assert "already done, skipped" in capsys.readouterr().out
    assert not (plain / "tensorboard").exists()  # nothing trained, nothing logged


@pytest.mark.slow
def test_event_files_hold_the_evaluation_rows(runs):
    _, live = runs
    assert {p.name for p in (live / "tensorboard").iterdir()} == {f"seed{s}" for s in SEEDS}
    for s in SEEDS:
        h = read_history(live, s)  # probes off: every row is an evaluation's
        expected = {
            "/".join(p for p in key if p): list(zip(g["step"], g["value"].astype(np.float32)))
            for key, g in h.groupby(["split", "metric", "layer"], sort=False)
        }
        assert {"test/loss", "test/acc", "train/loss", "train/acc"} <= set(expected)
        assert set(h["step"]) == set(STEPS)
        assert scalars(live / "tensorboard" / f"seed{s}") == expected


def test_rows_are_flushed_at_each_evaluation_for_the_members_training(tmp_path):
    live = LiveLog("tensorboard", tmp_path, [3, 7])
    rows = [("test", "acc", "", [0.25, 0.5]), ("train", "w_fro", "fc1", [1.5, 2.5])]
    live.evaluated(0, rows, [0, 1])
    live.evaluated(10, [("test", "acc", "", [0.75, float("nan")])], [0])  # seed 7 diverged
    # read while the writers are still open: each evaluation is on disk already
    assert scalars(tmp_path / "tensorboard" / "seed3") == {
        "test/acc": [(0, 0.25), (10, 0.75)],
        "train/w_fro/fc1": [(0, 1.5)],
    }
    assert scalars(tmp_path / "tensorboard" / "seed7") == {
        "test/acc": [(0, 0.5)],
        "train/w_fro/fc1": [(0, 2.5)],
    }
    live.close()


def test_none_writes_nothing(tmp_path):
    live = LiveLog("none", tmp_path, [0])
    live.evaluated(0, [("test", "acc", "", [0.5])], [0])
    live.close()
    assert list(tmp_path.iterdir()) == []


def test_without_tensorboard_the_config_is_refused_naming_the_fix(monkeypatch):
    make_cfg("train.log_to=none")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    make_cfg()  # the default needs nothing
    with pytest.raises(ConfigError) as err:
        make_cfg("train.log_to=tensorboard")
    msg = str(err.value)
    assert "\n" not in msg
    assert "train.log_to=tensorboard" in msg and 'pip install -e ".[track]"' in msg


def test_tensorboard_is_imported_only_when_asked_for():
    tree = ast.parse(Path(bnlab.runs.livelog.__file__).read_text())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] in ("tensorboard", "torch")]


def test_a_member_trained_again_starts_its_curves_afresh(tmp_path):
    """A retrained member (resume after a kill) writes a second event file; TensorBoard shows
    only its new curve (purge_step=0), not both drawn over each other."""
    for acc in ([0.1, 0.2, 0.3], [0.5, 0.6]):
        live = LiveLog("tensorboard", tmp_path, [0])
        for step, a in zip((0, 10, 20), acc):
            live.evaluated(step, [("test", "acc", "", [a])], [0])
        live.close()
    got = scalars(tmp_path / "tensorboard" / "seed0")["test/acc"]
    assert got == [(0, np.float32(0.5)), (10, np.float32(0.6))]
