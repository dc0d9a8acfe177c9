"""The loop's parts alone: the members' log (divergence, last and best, batch loss, summaries)
and the evaluator; and the benchmark's smoke run with its autograd and whole-loop figures."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from conftest import REPO, make_cfg, synthetic_data

from bnlab.engine.evaluation import Evaluator
from bnlab.engine.memberlog import MemberLog
from bnlab.engine.model import build_model
from bnlab.runs.records import History, read_history


def _eval_rows(test_acc, test_loss=(1.0, 1.0, 1.0)):
    return [
        ("test", "loss", "", list(test_loss)),
        ("test", "acc", "", list(test_acc)),
        ("train", "loss", "", [0.5, 0.5, 0.5]),
        ("train", "acc", "", [0.9, 0.9, 0.9]),
    ]


def test_member_log_marks_divergence_and_keeps_last_best_and_batch_loss(tmp_path):
    log = MemberLog([History(tmp_path, s) for s in (4, 5, 6)], [4, 5, 6])
    log.evaluated(0, _eval_rows([0.1, 0.2, 0.3]))
    assert log.add_losses(1, torch.tensor([1.0, 2.0, 3.0])) == []
    assert log.mask is None  # every member trains: train_step's fast path
    assert log.add_losses(2, torch.tensor([3.0, math.nan, 5.0])) == [1]
    assert log.mask.tolist() == [True, False, True] and log.training() == [0, 2]
    assert log.add_losses(3, torch.tensor([2.0, math.nan, 1.0])) == []  # already marked
    (row,) = log.batch_loss_rows()
    torch.testing.assert_close(torch.tensor(row[3]), torch.tensor([2.0, 2 / 3, 3.0]))
    assert log.batch_loss_rows() == []  # reset
    log.evaluated(3, _eval_rows([0.5, 0.9, 0.2]))  # member 1 diverged: not updated
    log.final(3, [("test", "acc_batch", "", [0.6, 0.7, 0.8])])
    log.close()
    s = log.summaries(steps=3, wall_s=2.0, common={"members": 3})
    assert [x["status"] for x in s] == ["finished", "diverged", "finished"]
    assert [x["steps_done"] for x in s] == [3, 1, 3]
    assert [x["best_test_acc"] for x in s] == [0.5, 0.2, 0.3]
    assert [x["test_acc"] for x in s] == [0.5, 0.2, 0.2]
    assert s[0]["test_acc_batch"] == 0.6 and "test_acc_batch" not in s[1]
    assert s[0]["steps_per_s"] == 1.5 and s[2]["members"] == 3
    h = read_history(tmp_path, 5)  # the diverged member's history stops at step 0
    assert set(h["step"]) == {0}
    assert set(read_history(tmp_path, 4)["step"]) == {0, 3}


def test_evaluator_equals_a_direct_computation():
    cfg = make_cfg(
        "model.norm=batch",
        "data.eval_train_size=100",
        "train.final_eval=[batch]",
        "data.holdout=50",
        "data.eval_holdout=true",
    )
    data = synthetic_data(n_train=256, n_test=64)
    held = synthetic_data(n_train=50, n_test=1, seed=1)
    data.x_valid, data.y_valid = held.x_train, held.y_train
    model = build_model(cfg.model, [0, 1])
    rows = {(s, m): torch.tensor(v) for s, m, _, v in Evaluator(cfg, model, data).rows()}
    model.eval()
    subsets = {
        "test": (data.x_test, data.y_test),
        "train": (data.x_train[:100], data.y_train[:100]),
        "valid": (data.x_valid, data.y_valid),  # data.eval_holdout
    }
    assert {split for split, _ in rows} == set(subsets)
    with torch.no_grad():
        for split, (x, y) in subsets.items():
            logits = model(x)
            for k in range(2):
                loss = torch.nn.functional.cross_entropy(logits[k], y).item()
                acc = (logits[k].argmax(-1) == y).double().mean().item()
                assert rows[split, "loss"][k].item() == pytest.approx(loss, rel=1e-5)
                assert rows[split, "acc"][k].item() == pytest.approx(acc)
    final = Evaluator(cfg, model, data).final_rows()
    assert [m for _, m, _, _ in final] == ["loss_batch", "acc_batch"]
    assert model.bn1.eval_stats == "running"  # restored


@pytest.mark.slow
def test_bench_smoke_prints_autograd_and_whole_loop_and_writes_markdown(mnist_root, tmp_path):
    md = tmp_path / "bench.md"
    args = ["--seconds", "0.02", "--batch-sizes", "4", "--members", "1", "--parallel-seconds"]
    args += ["0", "--probe-steps", "10", "--loop-steps", "50", "--markdown", str(md)]
    out = subprocess.run(
        [sys.executable, "-m", "bnlab", "bench", "--data-root", str(mnist_root), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "autograd" in out.stdout and "whole loop (run(), probes off), batch 4" in out.stdout
    text = md.read_text()
    assert text.startswith("Measured ") and out.stdout.strip() in text
