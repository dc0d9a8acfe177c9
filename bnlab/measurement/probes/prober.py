"""The Prober: runs every registered probe (registry.REGISTRY) on its schedule,
`cfg.probes.NAME.every`, during one training run."""

from __future__ import annotations

import functools

import torch

from ...engine.modelstate import capture
from ...engine.schedules import lr_factor
from .loss_landscape import StepContext
from .registry import REGISTRY, STATE, STEP, Probe, schedules
from .scale import ScaleTracker


class Step:
    """Training step `number` as a STEP probe sees it, after its optimiser step: `before`, the
    parameters before the step, and `context`, its StepContext, made on first use and shared by
    the probes of the step (every probe leaves the model as it found it, so the context is the
    same whichever probe makes it)."""

    def __init__(self, prober: Prober, number: int, before: tuple, x, y):
        self.prober, self.number, self.x, self.y = prober, number, x, y
        self.before, self.state = before  # parameters, and capture() of the model

    @functools.cached_property
    def context(self) -> StepContext:
        p = self.prober
        return StepContext(p.model, self.x, self.y, p.cfg.train.loss, self.before, self.state)


class Prober:
    """Runs the probes of `cfg.probes` on their schedules for one training run."""

    def __init__(self, cfg, model, x_train: torch.Tensor, x_test: torch.Tensor):
        self.cfg, self.p, self.model = cfg, cfg.probes, model
        g = torch.Generator().manual_seed(0)  # the same probe batch for every run and member
        n = self.p.batch
        self.x_train = x_train[torch.randperm(len(x_train), generator=g)[:n].to(x_train.device)]
        self.x_test = x_test[torch.randperm(len(x_test), generator=g)[:n].to(x_test.device)]
        self.names = schedules(self.p)  # the probes, in the order of their schedules
        self.memory: dict = {}  # what a probe keeps from one firing to the next, by its name
        self.scale = ScaleTracker(cfg, model) if self.p.scale.every > 0 else None
        self.total = cfg.train.steps  # steps() sets the run's real length

    def lr(self, step: int) -> float:
        """The base learning rate step `step` used (optim.lr under optim.schedule)."""
        return self.cfg.optim.lr * lr_factor(self.cfg.optim, step, self.total)

    @property
    def record(self) -> dict | None:
        """The dict every train_step records the layers' outputs into (probes.scale), or None."""
        return None if self.scale is None else self.scale.record

    def stepped(self) -> None:
        """Call after every training step (not only probed ones): probes.scale's accumulator."""
        if self.scale is not None:
            self.scale.stepped()

    def steps(self, steps: int) -> set[int]:
        """The training steps 1..steps at which some probe fires (the loop skips the rest)."""
        self.total = steps
        out: set[int] = set()
        for name in self.names:
            every = getattr(self.p, name).every
            out.update(range(every, steps + 1, every) if every > 0 else ())
        return out

    def due(self, name: str, step: int) -> bool:
        every = getattr(self.p, name).every
        return every > 0 and step % every == 0

    def firing(self, kind: str, step: int) -> list[Probe]:
        """The registered functions of this kind whose probe is due at `step`, in the order of
        the schedules (registry.schedules)."""
        due = [n for n in self.names if (n, kind) in REGISTRY and self.due(n, step)]
        return [REGISTRY[n, kind] for n in due]

    def before_step(self, step: int):
        """Call before training step `step`: what the step probes need, or None if none due
        (the step then writes no weight gradients)."""
        if step == 0 or not self.firing(STEP, step):
            return None
        params = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        return params, capture(self.model)

    def step_rows(self, step: int, before, x, y) -> list:
        """Probes of training step `step` (after its optimiser step)."""
        if before is None:
            return []
        s = Step(self, step, before, x, y)
        return [row for pr in self.firing(STEP, step) for row in pr.rows(self, s)]

    def state_rows(self, step: int) -> list:
        """Probes of the model as it is after step `step` (step 0: at initialisation)."""
        return [row for pr in self.firing(STATE, step) for row in pr.rows(self, step)]
