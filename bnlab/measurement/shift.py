"""Covariate shift at test time (train.shifts), and BN statistics re-estimated on the shifted
data (Nado et al. 2020, "Evaluating prediction-time batch normalization for robustness under
covariate shift", arXiv:2006.10963; Schneider et al. 2020, "Improving robustness against
common corruptions by covariate shift adaptation", arXiv:2006.16971).

With train.shifts=[KIND:STRENGTH, ...] at the end of a run (shift_rows below, an
end-of-run evaluation with the weights frozen; this module makes the shifted images), every
member is evaluated on shifted copies of the test set. BN's running statistics were estimated
on clean training images; on shifted images they no longer match the layer inputs, and
re-estimating them on the shifted images themselves is the cheapest adaptation there is.

- Shifts (SHIFTS, kind -> function of images (N, 784) in [0, 1] and STRENGTH), deterministic:
  the same images for every run and member.
  rotation: each 28x28 image rotated by STRENGTH degrees counter-clockwise about its centre,
    bilinear, black outside (affine_grid/grid_sample, align_corners=False).
  noise: x + STRENGTH * z, z standard normal from the fixed stream generator(0, 'shift-noise'),
    clipped to [0, 1].
  contrast: m + STRENGTH * (x - m), m the image's own mean pixel, clipped to [0, 1] (1: the
    image, 0: flat grey at m).
- Modes, per entry (the config string, and 'clean' for the unshifted test set):
  running: the model as it evaluates normally (model.bn_eval; for BN the running statistics
    from clean training data). The only mode for a model without a batch-statistics norm.
  adapted: every batch-statistics norm layer normalises with the mean and biased variance
    over all N shifted test images, the layers below already adapted (one forward pass of all
    N images with eval_stats='batch'); gamma and beta unchanged (Schneider et al. with N
    samples and no prior weight on the source statistics).
  batch: prediction-time BN, each test batch of data.batch_size images normalised with its
    own statistics (Nado et al.'s online setting; the last batch holds N mod batch_size).
- The model's state (buffers, counters, random streams, evaluation modes) is restored
  afterwards (modelstate.capture/restore), and nothing runs before the last training step.

Rows (split 'test', one value per member, the entry name in the layer slot):
shift_acc_{mode} and shift_loss_{mode} (mean cross-entropy), mode running | adapted | batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..engine.evaluation import evaluate
from ..engine.layers import generator
from ..engine.modelstate import capture, norms, restore
from ..engine.norms import BATCH_STAT_NORMS, population_statistics, set_eval_stats

SIDE = 28  # images are SIDE x SIDE, flattened row-major


def rotation(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Each image rotated by `degrees` counter-clockwise about its centre (bilinear, zero
    outside). Output pixel p samples the input at R(-degrees) p in grid_sample's coordinates
    (x right, y down), which turns the picture counter-clockwise on screen."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    img = x.double().view(len(x), 1, SIDE, SIDE)  # float64: rotation 0 is x to 1e-7
    theta = img.new_tensor([[c, -s, 0.0], [s, c, 0.0]]).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    out = F.grid_sample(img, grid, "bilinear", "zeros", align_corners=False)
    return out.reshape(len(x), -1).clamp(0.0, 1.0).to(x.dtype)


def noise(x: torch.Tensor, sd: float) -> torch.Tensor:
    """x + sd * z clipped to [0, 1]; z from the fixed stream generator(0, 'shift-noise')."""
    z = torch.randn(x.shape, generator=generator(0, "shift-noise"))
    return (x + sd * z.to(x.device, x.dtype)).clamp(0.0, 1.0)


def contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    """m + factor * (x - m) per image, m its mean pixel, clipped to [0, 1]."""
    m = x.mean(1, keepdim=True)
    return (m + factor * (x - m)).clamp(0.0, 1.0)


SHIFTS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "rotation": rotation,
    "noise": noise,
    "contrast": contrast,
}


def shifted(entry: str, x: torch.Tensor) -> torch.Tensor:
    """The images x under one train.shifts entry 'KIND:STRENGTH'."""
    kind, _, strength = entry.partition(":")
    return SHIFTS[kind](x, float(strength))


def shift_rows(cfg, model, data) -> list:
    """The final rows (module docstring) for every entry of train.shifts, plus 'clean';
    [] when train.shifts is empty."""
    if not cfg.train.shifts:
        return []
    layers = norms(model)
    modes = ["running"]
    if cfg.model.norm in BATCH_STAT_NORMS:
        modes += ["adapted", "batch"]
    saved, eval_modes = capture(model), [layer.eval_stats for _, layer in layers]
    rows, m = [], cfg.model
    try:
        if m.bn_eval == "population" and layers:  # as evaluation.Evaluator does
            batches = (m.population_batches, m.population_lower)
            population_statistics(model, data.x_train, cfg.data.batch_size, *batches)
        for entry in ["clean", *cfg.train.shifts]:
            x = data.x_test if entry == "clean" else shifted(entry, data.x_test)
            for mode in modes:
                if mode == "running":
                    set_eval_stats(model, m.bn_eval)
                    batch = cfg.train.eval_batch
                else:
                    set_eval_stats(model, "batch")
                    batch = len(x) if mode == "adapted" else cfg.data.batch_size
                loss, acc = evaluate(model, x, data.y_test, batch)
                rows += [
                    ("test", f"shift_acc_{mode}", entry, acc.tolist()),
                    ("test", f"shift_loss_{mode}", entry, loss.tolist()),
                ]
    finally:
        restore(model, saved)
        for (_, layer), mode in zip(layers, eval_modes):
            layer.eval_stats = mode
    return rows
