"""Learning-rate schedules (`optim.schedule`): the factor that multiplies optim.lr at a step.

    constant   1 throughout (the 2017 study, and every study unless it says otherwise)
    step       times optim.gamma at each of optim.milestones (fractions of the run)
    cosine     0.5 (1 + cos(pi (t - 1) / T)) (Loshchilov & Hutter 2017, no restarts)

The factor of step t is the one its update uses (t = 1 .. T). With optim.warmup_steps = N > 0
the factor rises linearly first, t/N for t = 1 .. N, and the schedule then runs over the
remaining T - N steps as if they were the whole run (torch.optim's SequentialLR of LinearLR
and the schedule's scheduler, milestone N).
"""

from __future__ import annotations

import math
from collections.abc import Callable


def _constant(t: int, total: int, milestones, gamma: float) -> float:
    return 1.0


def _step(t: int, total: int, milestones, gamma: float) -> float:
    return gamma ** sum(t > f * total for f in milestones)


def _cosine(t: int, total: int, milestones, gamma: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * (t - 1) / total))


SCHEDULES: dict[str, Callable[..., float]] = {
    "constant": _constant,
    "step": _step,
    "cosine": _cosine,
}


def lr_factor(cfg, t: int, total: int) -> float:
    """optim.lr's multiplier at step t of total under cfg (an OptimConfig)."""
    n = cfg.warmup_steps
    if t <= n:
        return t / n
    return SCHEDULES[cfg.schedule](t - n, total - n, cfg.milestones, cfg.gamma)
