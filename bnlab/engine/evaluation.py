"""Evaluation: per-member test and training-subset loss and accuracy in eval mode, on the
schedule of train.eval_* (and BN's extra evaluation modes at the end of a run)."""

from __future__ import annotations

import time

import torch

from .loss import member_losses
from .model import MLP
from .norms import BATCH_STAT_NORMS, population_statistics, set_eval_stats

EVAL_CHUNK = 1000  # examples per forward when no layer evaluates with batch statistics


@torch.no_grad()
def evaluate(model: MLP, x: torch.Tensor, y: torch.Tensor, batch: int) -> tuple:
    """Mean cross-entropy and accuracy per member, (K,) each, in eval mode.

    x (N, 784) is shared by all members and fed in chunks of `batch` examples (the batch
    whose statistics BN uses when evaluating with batch statistics). When no layer uses the
    batch's statistics, every example's output is independent of the others and chunks of at
    most EVAL_CHUNK keep the work in cache (a third faster than 10,000 at once in a run).
    """
    was_training = model.training
    model.eval()
    if not any(getattr(m, "eval_stats", None) == "batch" for m in model.modules()):
        batch = min(batch, EVAL_CHUNK)
    loss = torch.zeros(model.members, device=x.device, dtype=torch.float64)
    correct = torch.zeros(model.members, device=x.device, dtype=torch.float64)
    for i in range(0, len(x), batch):
        logits = model(x[i : i + batch])  # (K, b, 10)
        yb = y[i : i + batch].expand(model.members, -1)
        loss += member_losses(logits, yb, "sum").double()
        correct += (logits.argmax(-1) == yb).sum(1).double()
    model.train(was_training)
    return loss / len(x), correct / len(x)


def eval_steps(cfg, steps: int | None = None) -> set[int]:
    """The steps at which a run of `steps` steps (default train.steps) evaluates: 0, every
    eval_every (or train.evals evenly spaced points), the dense early ones, and the last."""
    t = cfg.train
    steps = t.steps if steps is None else steps
    if t.evals:
        when = {round(i * steps / t.evals) for i in range(t.evals + 1)}
    else:
        when = set(range(0, steps + 1, t.eval_every))
    when |= set(range(0, min(t.eval_dense_until, steps + 1), t.eval_dense_every))
    return when | {steps}


class Evaluator:
    """The evaluations of one run, timed: the scheduled ones (test set and the fixed training
    subset) and the final ones under each extra BN evaluation mode (train.final_eval)."""

    def __init__(self, cfg, model: MLP, data):
        self.cfg, self.model, self.data = cfg, model, data
        self.x_fit = data.x_train[: cfg.data.eval_train_size]
        self.y_fit = data.y_train[: cfg.data.eval_train_size]
        self.seconds = 0.0  # spent evaluating (reported in the summaries)

    def _population(self) -> None:
        m = self.cfg.model
        population_statistics(
            self.model,
            self.data.x_train,
            self.cfg.data.batch_size,
            m.population_batches,
            m.population_lower,
        )

    def rows(self) -> list:
        """Rows (split, metric, layer, values per member) of a scheduled evaluation: loss and
        acc on the test set, the training subset and (data.eval_holdout) the held-out images
        (split 'valid', for choosing settings without looking at the test set), BN as bn_eval
        says."""
        t0 = time.perf_counter()
        if self.cfg.model.bn_eval == "population":
            self._population()
        rows, splits = (
            [],
            [
                ("test", self.data.x_test, self.data.y_test),
                ("train", self.x_fit, self.y_fit),
            ],
        )
        if self.cfg.data.eval_holdout:
            splits.append(("valid", self.data.x_valid, self.data.y_valid))
        for split, x, y in splits:
            loss, acc = evaluate(self.model, x, y, self.cfg.train.eval_batch)
            rows += [(split, "loss", "", loss.tolist()), (split, "acc", "", acc.tolist())]
        self.seconds += time.perf_counter() - t0
        return rows

    def final_rows(self) -> list:
        """Test loss_MODE and acc_MODE under each mode of train.final_eval, for models with a
        batch-statistics norm (no copies of the same number elsewhere)."""
        t0 = time.perf_counter()
        cfg, rows = self.cfg, []
        for mode in cfg.train.final_eval if cfg.model.norm in BATCH_STAT_NORMS else []:
            set_eval_stats(self.model, mode)
            if mode == "population":
                self._population()
            loss, acc = evaluate(
                self.model, self.data.x_test, self.data.y_test, cfg.train.eval_batch
            )
            rows += [
                ("test", f"loss_{mode}", "", loss.tolist()),
                ("test", f"acc_{mode}", "", acc.tolist()),
            ]
        set_eval_stats(self.model, cfg.model.bn_eval)
        self.seconds += time.perf_counter() - t0
        return rows
