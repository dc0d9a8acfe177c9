"""Live TensorBoard logging while a run trains: `train.log_to=tensorboard`.

Every scheduled evaluation's rows (test and training-subset loss and accuracy, the mean
training-batch loss since the last evaluation, and whatever else the evaluation writes to the
history) go to one event folder per member, RUN/tensorboard/seed<S>/, tagged as
`bnlab export --to tensorboard` tags them (split/metric or split/metric/layer,
bnlab.runs.export.tag) and flushed at once, so `tensorboard --logdir RUN` (or the sweep folder)
shows the curves while the run trains. Nothing is read back: training and its history are the same
with and without it. Probes and hyperparameters are left to the after-the-fact export.
"""

from __future__ import annotations

from pathlib import Path

from .export import tag

FOLDER = "tensorboard"  # RUN/tensorboard/seed<S>/


class LiveLog:
    """One TensorBoard writer per member (none with log_to='none': then it does nothing)."""

    def __init__(self, log_to: str, out_dir: Path, seeds: list[int]):
        self.writers = []
        if log_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter  # the optional extra `track`

            # purge_step=0: a member trained again (a resumed folder) starts its curves afresh
            # in TensorBoard instead of drawing them over the interrupted ones
            self.writers = [
                SummaryWriter(str(out_dir / FOLDER / f"seed{s}"), purge_step=0) for s in seeds
            ]

    def evaluated(self, step: int, rows: list, members: list[int]) -> None:
        """An evaluation's rows (split, metric, layer, values per member) for the members
        still training (indices, as MemberLog.training gives them), flushed to disk."""
        for k in members if self.writers else []:
            for split, metric, layer, values in rows:
                self.writers[k].add_scalar(tag(split, metric, layer, "/"), values[k], step)
            self.writers[k].flush()

    def close(self) -> None:
        for w in self.writers:
            w.close()
