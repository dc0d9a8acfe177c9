"""The members' log: what a training run knows of each ensemble member while it trains."""

from __future__ import annotations

import math

import torch

EVAL_KEYS = ("test_loss", "test_acc", "train_loss", "train_acc")  # the summary's last values


class MemberLog:
    """Each member's history file, whether it still trains, its last and best evaluation,
    the mean training-batch loss since the last evaluation, and its summary at the end.

    A member whose training loss is not finite has diverged: it is marked at that step,
    nothing more is written to its history, and its summary says `diverged` with the steps it
    completed; the others train on.
    """

    def __init__(self, histories: list, seeds: list[int], device: torch.device | str = "cpu"):
        """histories: one writer per member (records.History: add, flush, close)."""
        self.seeds = seeds
        self.histories = histories
        self.alive = torch.ones(len(seeds), dtype=torch.bool, device=device)
        self.mask: torch.Tensor | None = None  # None while every member trains, else alive
        self.diverged_after: list[int | None] = [None] * len(seeds)  # steps completed
        self.last: list[dict] = [{} for _ in seeds]  # last evaluation of each member
        self.best = [0.0] * len(seeds)  # best test accuracy of each member
        self._loss_sum = torch.zeros(len(seeds), device=device)
        self._loss_steps = 0

    def training(self) -> list[int]:
        """Indices of the members still training."""
        return [k for k, d in enumerate(self.diverged_after) if d is None]

    def add_losses(self, step: int, losses: torch.Tensor) -> list[int]:
        """Account training step `step`'s losses (K,); return the members that diverged at
        this step (their loss is not finite), now marked."""
        new = []
        if not math.isfinite(float(losses.sum())):  # rare; frozen members stay finite
            finite = torch.isfinite(losses)
            new = torch.nonzero(self.alive & ~finite).flatten().tolist()
            for k in new:
                self.diverged_after[k] = step - 1
            self.alive &= finite
            self.mask = self.alive
        self._loss_sum += losses if self.mask is None else torch.where(self.alive, losses, 0.0)
        self._loss_steps += 1
        return new

    def write(self, step: int, rows: list) -> None:
        """Rows (split, metric, layer, values per member) into the histories of the members
        still training."""
        if not rows:
            return
        for k in self.training():
            h = self.histories[k]
            for split, metric, layer, values in rows:
                h.add(step, split, metric, float(values[k]), layer)
            h.flush()

    def batch_loss_rows(self) -> list:
        """The mean training-batch loss per member since the last call (none before a step)."""
        if not self._loss_steps:
            return []
        rows = [("train", "batch_loss", "", (self._loss_sum / self._loss_steps).tolist())]
        self._loss_sum.zero_()
        self._loss_steps = 0
        return rows

    def evaluated(self, step: int, rows: list) -> None:
        """Write a scheduled evaluation's rows; keep each member's last and best values."""
        self.write(step, rows)
        values = {f"{s}_{m}": v for s, m, layer, v in rows if f"{s}_{m}" in EVAL_KEYS and not layer}
        for k in self.training():
            self.last[k] = {key: v[k] for key, v in values.items()}
            self.best[k] = max(self.best[k], self.last[k]["test_acc"])

    def final(self, step: int, rows: list) -> None:
        """Write the final evaluations' rows (test set) and add those of no particular layer
        to the last values."""
        self.write(step, rows)
        for k in self.training():
            self.last[k].update(
                {f"{split}_{metric}": v[k] for split, metric, layer, v in rows if not layer}
            )

    def postfix(self) -> str:
        """Mean test accuracy and loss of the members still training, for the progress bar."""
        on = self.training() or [0]
        acc, loss = (sum(self.last[k][m] for k in on) / len(on) for m in ("test_acc", "test_loss"))
        return f"test acc {acc:.4f}, loss {loss:.4f}"

    def summaries(self, steps: int, wall_s: float, common: dict) -> list[dict]:
        """One summary per member: status, steps done, last and best evaluation, `common`."""
        out = []
        for k, seed in enumerate(self.seeds):
            done = steps if self.diverged_after[k] is None else self.diverged_after[k]
            out.append(
                {
                    "seed": seed,
                    "status": "finished" if self.diverged_after[k] is None else "diverged",
                    "steps_done": done,
                    "steps_per_s": done / wall_s,
                    "best_test_acc": self.best[k],
                    "error": None,
                    **self.last[k],
                    **common,
                }
            )
        return out

    def close(self) -> None:
        for h in self.histories:
            h.close()
