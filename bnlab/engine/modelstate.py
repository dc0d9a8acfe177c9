"""A model's state besides its parameters, and its layers by kind: what the probes and the
end-of-run evaluations (shifted test sets, batch orders) save before a pass that would change
it, and restore after.
"""

from __future__ import annotations

import torch

from .layers import Layer, Linear
from .norms import BatchStatNorm


def capture(model) -> tuple:
    """Everything a training-mode pass changes besides parameters: buffers (BN statistics),
    each layer's declared `state` (BN counters, Batch Renorm clip statistics), and the
    dropout/noise random streams."""
    buffers = [b.clone() for b in model.buffers()]
    state = [
        (m, name, _copy(getattr(m, name)))
        for m in model.modules()
        if isinstance(m, Layer)
        for name in m.state
    ]
    streams = [(g, g.get_state()) for m in model.modules() for g in getattr(m, "generators", [])]
    return buffers, state, streams


def _copy(value):
    return value.clone() if torch.is_tensor(value) else value


@torch.no_grad()
def restore(model, saved: tuple) -> None:
    buffers, state, streams = saved
    for b, old in zip(model.buffers(), buffers):
        b.copy_(old)
    for m, name, value in state:
        setattr(m, name, _copy(value))
    for g, s in streams:
        g.set_state(s)


def linears(model) -> list[tuple[str, Linear]]:
    return [(n, getattr(model, n)) for n in model.order if isinstance(getattr(model, n), Linear)]


def norms(model, kind=BatchStatNorm) -> list[tuple[str, object]]:
    return [(n, getattr(model, n)) for n in model.order if isinstance(getattr(model, n), kind)]
